//! Self-tests of the test doubles the poller's HTTPS and proxy tests stand
//! on: if `TlsMedia` accepted a certificate it should refuse, or `TestProxy`
//! let requests bypass it, those tests would pass for the wrong reason.
//! Every client here is an ordinary reqwest client, as the poller's is.

use axum::http::Version;
use livepush_tests::{
    PATIENCE, TestMedia, eventually,
    proxy::{ProxySeen, TestProxy},
    raw_request,
    tls_media::{TestCa, TlsMedia, Validity},
};

/// A reqwest client over `tls`, with no proxy unless `proxy` is given.
fn client(tls: rustls::ClientConfig, proxy: Option<reqwest::Proxy>) -> reqwest::Client {
    let builder = reqwest::Client::builder().tls_backend_preconfigured(tls).timeout(PATIENCE);
    let builder = match proxy {
        Some(proxy) => builder.proxy(proxy),
        None => builder.no_proxy(),
    };
    builder.build().expect("client")
}

/// A client config that trusts no certificate at all.
fn trusting_nothing() -> rustls::ClientConfig {
    rustls::ClientConfig::builder_with_provider(livepush::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth()
}

/// GET `url`: status and body, or the error as text.
async fn get(client: &reqwest::Client, url: &str) -> Result<(u16, String), String> {
    let response = client.get(url).send().await.map_err(|e| format!("{e:?}"))?;
    let status = response.status().as_u16();
    Ok((status, response.text().await.map_err(|e| format!("{e:?}"))?))
}

fn live_url(template: &str, id: &str) -> String {
    template.replace("{event_id}", id)
}

#[tokio::test]
async fn tls_media_speaks_http2_to_a_client_trusting_its_ca() {
    let ca = TestCa::new("media CA");
    let media = TlsMedia::start(&ca.leaf(&["localhost"], Validity::Valid)).await;
    media.set_json("x", r#"{"live":true}"#);

    let got = get(&client(ca.client_config(None), None), &live_url(&media.template(), "x")).await;
    assert_eq!(got, Ok((200, r#"{"live":true}"#.to_owned())));
    assert_eq!(media.count("x"), 1, "counted through TestMedia's methods");
    assert_eq!(media.versions(), vec![Version::HTTP_2], "ALPN picked h2");
    assert_eq!(media.handshakes_ok(), 1);
    assert_eq!(media.handshakes_failed(), 0);
}

#[tokio::test]
async fn tls_media_speaks_http1_when_that_is_all_the_client_offers() {
    let ca = TestCa::new("media CA");
    let media = TlsMedia::start(&ca.leaf(&["localhost"], Validity::Valid)).await;
    let mut tls = ca.client_config(None);
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];

    let got = get(&client(tls, None), &live_url(&media.heartbeat_template(), "x")).await;
    assert_eq!(got.map(|(status, _)| status), Ok(405), "presence takes POST only");
    assert_eq!(media.versions(), vec![Version::HTTP_11]);
}

#[tokio::test]
async fn swapped_certificates_apply_to_new_handshakes() {
    let ca = TestCa::new("media CA");
    let good = ca.leaf(&["localhost"], Validity::Valid);
    let media = TlsMedia::start(&good).await;
    let url = live_url(&media.template(), "x");
    assert!(get(&client(ca.client_config(None), None), &url).await.is_ok());

    media.set_leaf(&ca.leaf(&["localhost"], Validity::Expired));
    let err = get(&client(ca.client_config(None), None), &url).await.expect_err("expired certificate");
    assert!(err.contains("Expired"), "{err}");

    media.set_leaf(&ca.leaf(&["media.example"], Validity::Valid));
    let err = get(&client(ca.client_config(None), None), &url).await.expect_err("wrong name");
    assert!(err.contains("NotValidForName"), "{err}");

    media.set_leaf(&good);
    assert!(get(&client(ca.client_config(None), None), &url).await.is_ok());
    assert_eq!(media.count("x"), 2, "refused handshakes never reach the app");
    assert_eq!(media.handshakes_ok(), 2);
    eventually("both refusals counted", || media.handshakes_failed() == 2).await;
}

#[tokio::test]
async fn a_client_trusting_another_ca_or_none_is_refused() {
    let ca = TestCa::new("media CA");
    let media = TlsMedia::start(&ca.leaf(&["localhost"], Validity::Valid)).await;
    let url = live_url(&media.template(), "x");

    let err = get(&client(trusting_nothing(), None), &url).await.expect_err("no trust anchors");
    assert!(err.contains("UnknownIssuer"), "{err}");
    let other = TestCa::new("other CA");
    let err = get(&client(other.client_config(None), None), &url).await.expect_err("another CA");
    assert!(err.contains("UnknownIssuer"), "{err}");
    assert_eq!(media.total(), 0);
    assert_eq!(media.handshakes_ok(), 0);
}

#[tokio::test]
async fn client_auth_takes_a_certificate_from_the_client_ca_only() {
    let ca = TestCa::new("media CA");
    let clients = TestCa::new("client CA");
    let media = TlsMedia::start_with_client_auth(&ca.leaf(&["localhost"], Validity::Valid), &clients).await;
    let url = live_url(&media.template(), "x");

    let identity = clients.client_leaf("poller");
    let got = get(&client(ca.client_config(Some(&identity)), None), &url).await;
    assert_eq!(got.map(|(status, _)| status), Ok(200));

    assert!(get(&client(ca.client_config(None), None), &url).await.is_err(), "no client certificate");
    let stranger = ca.client_leaf("stranger");
    let got = get(&client(ca.client_config(Some(&stranger)), None), &url).await;
    assert!(got.is_err(), "client certificate from the wrong CA");

    assert_eq!(media.count("x"), 1);
    assert_eq!(media.handshakes_ok(), 1);
    eventually("both refusals counted", || media.handshakes_failed() == 2).await;
}

#[tokio::test]
async fn written_pems_round_trip() {
    let dir = std::env::temp_dir().join(format!("livepush-doubles-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = TestCa::new("media CA");
    let leaf = ca.leaf(&["localhost", "127.0.0.1"], Validity::Valid);
    let (cert, key) = leaf.write(&dir);
    let (again, _) = ca.leaf(&["localhost"], Validity::Valid).write(&dir);
    assert_ne!(cert, again, "one directory holds many leaves");
    assert_eq!(std::fs::read_to_string(&cert).unwrap(), leaf.cert_pem);
    assert_eq!(std::fs::read_to_string(&key).unwrap(), leaf.key_pem);
    let pem = std::fs::read_to_string(ca.write_ca(&dir)).unwrap();
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");
    assert_eq!(pem, ca.ca_pem());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn plain_http_goes_through_the_proxy_in_absolute_form() {
    let media = TestMedia::start().await;
    let proxy = TestProxy::start().await;
    let via_proxy = Some(reqwest::Proxy::http(proxy.url()).unwrap());
    let client = client(trusting_nothing(), via_proxy);
    let url = live_url(&media.template(), "x");

    for _ in 0..2 {
        assert_eq!(get(&client, &url).await, Ok((200, r#"{"event":"x"}"#.to_owned())));
    }
    let seen = ProxySeen { method: "GET".into(), target: url.clone() };
    assert_eq!(proxy.seen(), vec![seen.clone(), seen], "every request seen, none bypassing");
    assert_eq!(proxy.count(), 2);
    assert_eq!(media.count("x"), 2);
}

#[tokio::test]
async fn https_goes_through_the_proxy_in_a_connect_tunnel() {
    let ca = TestCa::new("media CA");
    let media = TlsMedia::start(&ca.leaf(&["localhost"], Validity::Valid)).await;
    let proxy = TestProxy::start().await;
    let via_proxy = Some(reqwest::Proxy::https(proxy.url()).unwrap());

    let got = get(&client(ca.client_config(None), via_proxy), &live_url(&media.template(), "x")).await;
    assert_eq!(got.map(|(status, _)| status), Ok(200));
    let target = format!("localhost:{}", media.addr.port());
    assert_eq!(proxy.seen(), vec![ProxySeen { method: "CONNECT".into(), target }]);
    assert_eq!(media.versions(), vec![Version::HTTP_2], "ALPN through the tunnel");
}

#[tokio::test]
async fn the_proxy_refuses_what_it_cannot_forward() {
    let proxy = TestProxy::start().await;
    let cases = [
        "NOT HTTP AT ALL\r\n\r\n".to_owned(),
        "GET /live/x HTTP/1.1\r\nhost: a\r\n\r\n".to_owned(),
        "GET https://localhost/ HTTP/1.1\r\n\r\n".to_owned(),
        "CONNECT localhost HTTP/1.1\r\n\r\n".to_owned(),
        format!("GET http://localhost/ HTTP/1.1\r\nx-big: {}\r\n\r\n", "a".repeat(20 * 1024)),
    ];
    for request in &cases {
        let (status, _) = raw_request(proxy.addr, request).await;
        assert_eq!(status, 400, "{request:.60}");
    }
    assert_eq!(proxy.count(), 3, "heads that parsed are recorded, even when refused");
}

#[tokio::test]
async fn the_proxy_answers_502_when_the_target_is_down() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let proxy = TestProxy::start().await;
    let (status, _) = raw_request(proxy.addr, &format!("CONNECT {closed} HTTP/1.1\r\n\r\n")).await;
    assert_eq!(status, 502);
    let request = format!("GET http://{closed}/ HTTP/1.1\r\nhost: {closed}\r\n\r\n");
    assert_eq!(raw_request(proxy.addr, &request).await.0, 502);
}
