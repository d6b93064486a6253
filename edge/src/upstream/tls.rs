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
use rustls::pki_types::ServerName;
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
use tracing::info;

/// `--poller-ca`: extra trusted CA certificates (PEM, one or more).
pub use livepush::tls::CaBundle as PollerCa;

/// The client side of every handshake with a poller: the system's roots
/// plus `ca`, ALPN `h2`, no client certificate (the edge proves who it is
/// with its bearer token).
pub fn client_config(ca: Option<&PollerCa>) -> Arc<rustls::ClientConfig> {
    let (roots, system, source) = livepush::tls::roots(ca);
    info!(roots = system, ?source, poller_ca = ca.map(|c| c.path.as_str()), "TLS trust for https:// pollers");
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
