//! The edge over TLS: HTTP/2 negotiated by ALPN, so one browser's many
//! EventSources share one connection; HTTP/1.1 still works for old clients.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use livepush_tests::{PATIENCE, TestMedia, start_edge, start_poller};
use rustls::pki_types::{CertificateDer, ServerName};
use std::sync::Arc;
use tokio_rustls::TlsConnector;

/// A self-signed certificate for `localhost`, written to a temporary
/// directory; returns the paths and the DER for the client's trust store.
fn certificate(dir: &std::path::Path) -> (String, String, CertificateDer<'static>) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let der = cert.cert.der().clone();
    (cert_path.display().to_string(), key_path.display().to_string(), der)
}

async fn tls_connect(
    addr: std::net::SocketAddr,
    der: CertificateDer<'static>,
    alpn: &[&[u8]],
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(livepush::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    TlsConnector::from(Arc::new(config)).connect(name, tcp).await.unwrap()
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("livepush-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_streams_share_one_http2_connection() {
    let dir = temp_dir("h2");
    let (cert, key, der) = certificate(&dir);
    let media = TestMedia::start().await;
    let poller = start_poller(&["--media-url", &media.template(), "--interval", "1h"]).await;
    let edge = start_edge(&["--poller", &poller.url(), "--tls-cert", &cert, "--tls-key", &key]).await;

    let tls = tls_connect(edge.addr, der, &[b"h2", b"http/1.1"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]), "ALPN picks HTTP/2");
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await.unwrap();
    tokio::spawn(conn);

    // Ten EventSources of one page, all multiplexed on this one connection.
    let mut streams = Vec::new();
    for i in 0..10 {
        let request = hyper::Request::get(format!("https://localhost/live/tab-{i}/stream"))
            .header("accept", "text/event-stream")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let response = sender.clone().send_request(request).await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.version(), hyper::Version::HTTP_2);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        streams.push((i, response.into_body()));
    }
    for (i, mut body) in streams {
        let mut text = String::new();
        while !text.contains("data: ") {
            let frame = tokio::time::timeout(PATIENCE, body.frame()).await.unwrap().unwrap().unwrap();
            if let Ok(data) = frame.into_data() {
                text.push_str(std::str::from_utf8(&data).unwrap());
            }
        }
        assert!(text.contains(&format!(r#"data: {{"event":"tab-{i}"}}"#)), "{text}");
    }
    // A multi-event stream on the same connection: one HTTP/2 stream.
    let request = hyper::Request::get("https://localhost/live/stream?event=tab-0&event=tab-9")
        .header("accept", "text/event-stream")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = sender.clone().send_request(request).await.unwrap();
    assert_eq!((response.status().as_u16(), response.version()), (200, hyper::Version::HTTP_2));
    let mut body = response.into_body();
    let mut text = String::new();
    while text.matches("data: ").count() < 2 {
        let frame = tokio::time::timeout(PATIENCE, body.frame()).await.unwrap().unwrap().unwrap();
        if let Ok(data) = frame.into_data() {
            text.push_str(std::str::from_utf8(&data).unwrap());
        }
    }
    for i in [0, 9] {
        let tagged = format!(r#"data: {{"event_id":"tab-{i}","data":{{"event":"tab-{i}"}}}}"#);
        assert!(text.contains(&tagged), "{text}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_over_tls_still_works() {
    let dir = temp_dir("h1");
    let (cert, key, der) = certificate(&dir);
    let media = TestMedia::start().await;
    let poller = start_poller(&["--media-url", &media.template(), "--interval", "1h"]).await;
    let edge = start_edge(&["--poller", &poller.url(), "--tls-cert", &cert, "--tls-key", &key]).await;

    let tls = tls_connect(edge.addr, der, &[b"http/1.1"]).await;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.unwrap();
    tokio::spawn(conn);
    let request = hyper::Request::get("/live/old/stream")
        .header("host", "localhost")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!((response.status().as_u16(), response.version()), (200, hyper::Version::HTTP_11));
    let mut body = response.into_body();
    let mut text = String::new();
    while !text.contains("data: ") {
        let frame = tokio::time::timeout(PATIENCE, body.frame()).await.unwrap().unwrap().unwrap();
        if let Ok(data) = frame.into_data() {
            text.push_str(std::str::from_utf8(&data).unwrap());
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn bad_tls_files_stop_start_up_naming_the_flag() {
    let dir = temp_dir("bad");
    let junk = dir.join("junk.pem");
    std::fs::write(&junk, "not a pem").unwrap();
    let junk = junk.display().to_string();
    let (cert, _, _) = certificate(&dir);
    for (cert, key, flag) in
        [(junk.as_str(), junk.as_str(), "--tls-cert"), (cert.as_str(), junk.as_str(), "--tls-key")]
    {
        let err = edge::tls::acceptor(cert.as_ref(), key.as_ref()).err().expect("refused");
        assert!(err.to_string().contains(flag), "{err}");
    }
    let _ = std::fs::remove_dir_all(dir);
}
