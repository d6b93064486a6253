//! TLS to pollers: a `--poller https://host:port` is reached over TLS,
//! verified against the system's trust store plus `--poller-ca` (the private
//! CA that signed the pollers' certificates), for the name in the URL. So an
//! edge can reach pollers across a network it does not trust.
//!
//! rustls with the workspace's provider ([`livepush::tls`]), not tonic's TLS
//! features (which would bring a second provider): tonic gets a connector
//! ([`TlsConnector`]) that dials TCP and completes the handshake, offering
//! ALPN `h2`; tonic's connect timeout covers both. A certificate that does
//! not verify fails the connection like an unreachable poller: its health
//! watch never reports SERVING, so no event is routed to it, and the log
//! says why at debug (`RUST_LOG=edge=debug`).

use hyper_util::rt::TokioIo;
use rustls::{
    RootCertStore,
    pki_types::{CertificateDer, ServerName, pem::PemObject},
};
use std::{
    future::Future,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tonic::transport::Uri;
use tower_service::Service;
use tracing::{info, warn};

/// `--poller-ca`: extra trusted CA certificates (PEM, one or more).
#[derive(Clone, Debug)]
pub struct PollerCa {
    path: String,
    certs: Vec<CertificateDer<'static>>,
}

impl PollerCa {
    /// Reads and checks the bundle (the flag's value parser): every
    /// certificate must be a usable trust anchor.
    pub fn load(path: &str) -> Result<Self, String> {
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| format!("{path}: {e}"))?;
        if certs.is_empty() {
            return Err(format!("{path}: no PEM certificate found"));
        }
        let mut store = RootCertStore::empty();
        for (i, cert) in certs.iter().enumerate() {
            store
                .add(cert.clone())
                .map_err(|e| format!("{path}: certificate {} is not a usable CA: {e}", i + 1))?;
        }
        Ok(Self { path: path.to_owned(), certs })
    }
}

/// The client side of every handshake with a poller: the system's roots
/// plus `ca`, ALPN `h2`, no client certificate (the edge proves who it is
/// with its bearer token).
pub fn client_config(ca: Option<&PollerCa>) -> Arc<rustls::ClientConfig> {
    let native = rustls_native_certs::load_native_certs();
    for error in native.errors.iter().take(3) {
        warn!(%error, "reading the system's trust store");
    }
    let mut roots = RootCertStore::empty();
    let (system, _) = roots.add_parsable_certificates(native.certs);
    if let Some(ca) = ca {
        for cert in &ca.certs {
            roots.add(cert.clone()).expect("checked when --poller-ca was parsed");
        }
    }
    info!(system_roots = system, poller_ca = ca.map(|c| c.path.as_str()), "TLS trust for https:// pollers");
    if roots.is_empty() {
        warn!("no trusted roots for https:// pollers: give --poller-ca");
    }
    let mut config = rustls::ClientConfig::builder_with_provider(livepush::tls::provider())
        .with_safe_default_protocol_versions()
        .expect("the provider supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(config)
}

/// Dials one poller address and completes the TLS handshake, verifying the
/// certificate for `name` (the host of the `--poller` URL, not the address
/// it resolved to: a DNS name resolving to many pollers is one name).
#[derive(Clone)]
pub struct TlsConnector {
    addr: SocketAddr,
    name: ServerName<'static>,
    tls: tokio_rustls::TlsConnector,
}

impl TlsConnector {
    pub fn new(addr: SocketAddr, name: ServerName<'static>, config: Arc<rustls::ClientConfig>) -> Self {
        Self { addr, name, tls: tokio_rustls::TlsConnector::from(config) }
    }
}

type Connecting = Pin<Box<dyn Future<Output = io::Result<TokioIo<TlsStream<TcpStream>>>> + Send>>;

impl Service<Uri> for TlsConnector {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = io::Error;
    type Future = Connecting;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    /// The URI is tonic's endpoint (`https://addr`); the address and name
    /// are this connector's own.
    fn call(&mut self, _: Uri) -> Connecting {
        let (addr, name, tls) = (self.addr, self.name.clone(), self.tls.clone());
        Box::pin(async move {
            let tcp = TcpStream::connect(addr).await?;
            let _ = tcp.set_nodelay(true);
            let stream = tls.connect(name, tcp).await?;
            Ok(TokioIo::new(stream))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_ca_files_are_refused_with_their_path() {
        let dir = std::env::temp_dir().join(format!("livepush-poller-ca-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let junk = dir.join("junk.pem");
        std::fs::write(&junk, "-----BEGIN CERTIFICATE-----\n@@@\n-----END CERTIFICATE-----\n").unwrap();
        for path in [empty.to_str().unwrap(), junk.to_str().unwrap(), "/nonexistent/ca.pem"] {
            let err = PollerCa::load(path).unwrap_err();
            assert!(err.contains(path), "{err}");
        }
    }
}
