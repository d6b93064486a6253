//! TLS on the gRPC port (`--tls-cert`, `--tls-key`), so edges and internal
//! clients can reach the poller across networks that are not trusted.
//!
//! The workspace's one TLS stack is rustls with aws-lc-rs
//! ([`livepush::tls::provider`]); tonic's own TLS features would bring in a
//! second provider, so the poller terminates TLS itself and hands tonic
//! finished connections: an accept loop takes TCP connections, runs each
//! handshake in a task of its own (bounded in number and in time, so slow or
//! silent clients cannot hold up the others), and queues the result for
//! `serve_with_incoming_shutdown`. Each connection reports the peer's
//! address as plain TCP does ([`TlsConnection`] implements tonic's
//! `Connected`), so `request.remote_addr()` and what relies on it
//! (per-connection and per-client limits) work unchanged.
//!
//! ALPN offers `h2` (gRPC) and `http/1.1` (a Prometheus scrape of
//! `/metrics` over HTTPS). Health and reflection are served over the same
//! TLS: `grpcurl -cacert ca.pem host:50051 list`.

use rustls::pki_types::CertificateDer;
use std::{
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{Semaphore, mpsc},
};
use tokio_rustls::{TlsAcceptor, server::TlsStream};
use tokio_stream::{Stream, StreamExt, wrappers::ReceiverStream};
use tokio_util::sync::CancellationToken;
use tonic::transport::server::{Connected, TcpConnectInfo};
use tracing::{debug, warn};

/// Longest a client may take to complete its handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; beyond, new connections wait in the
/// kernel's accept queue (a reconnecting fleet of edges is far below).
pub const MAX_HANDSHAKES: usize = 1_024;
/// Finished connections waiting for the server to take them.
const READY_QUEUE: usize = 64;

/// `--tls-cert`: the certificate chain the poller presents (PEM, leaf first).
#[derive(Clone, Debug)]
pub struct ServerCert {
    path: String,
    certs: Vec<CertificateDer<'static>>,
}

impl ServerCert {
    /// Reads and checks the chain (the flag's value parser).
    pub fn load(path: &str) -> Result<Self, String> {
        Ok(Self { path: path.to_owned(), certs: livepush::tls::read_certs(path)? })
    }
}

crate::tls::private_key! {
    /// `--tls-key`: the private key of `--tls-cert` (PEM).
    ServerKey
}

/// A certificate and key that rustls refuses (they do not match, or the key
/// type is not supported).
#[derive(Debug, thiserror::Error)]
#[error("--tls-cert {cert}/--tls-key: {source}")]
pub struct IdentityError {
    cert: String,
    #[source]
    source: rustls::Error,
}

/// The server side of every handshake: the certificate, TLS 1.2 and 1.3,
/// ALPN `h2` then `http/1.1`. No client certificate is asked for: clients
/// prove who they are with bearer tokens (see `crate::access`).
pub fn acceptor(cert: &ServerCert, key: &ServerKey) -> Result<TlsAcceptor, IdentityError> {
    let error = |source| IdentityError { cert: cert.path.clone(), source };
    let mut config = rustls::ServerConfig::builder_with_provider(livepush::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(error)?
        .with_no_client_auth()
        .with_single_cert(cert.certs.clone(), key.0.clone_key())
        .map_err(error)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The connections of `listener` once their handshake is done, until `stop`
/// (then the stream ends, as the server expects of a listener that closed).
/// Failed and timed-out handshakes are logged at debug and skipped.
///
/// The accept loop is a task that ends with `stop` or when the stream is
/// dropped; each handshake task ends within [`HANDSHAKE_TIMEOUT`].
pub fn incoming(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    stop: CancellationToken,
) -> impl Stream<Item = Result<TlsConnection, io::Error>> {
    let (tx, rx) = mpsc::channel(READY_QUEUE);
    tokio::spawn(accept_loop(listener, acceptor, tx, stop));
    ReceiverStream::new(rx).map(Ok)
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    ready: mpsc::Sender<TlsConnection>,
    stop: CancellationToken,
) {
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        let permit = tokio::select! {
            _ = stop.cancelled() => return,
            _ = ready.closed() => return,
            permit = handshakes.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
        };
        let (tcp, peer) = tokio::select! {
            _ = stop.cancelled() => return,
            _ = ready.closed() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // EMFILE and friends: wait for connections to close
                    // rather than spin.
                    warn!(%error, "accepting a gRPC connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let info = TcpConnectInfo { local_addr: tcp.local_addr().ok(), remote_addr: Some(peer) };
        let (acceptor, ready) = (acceptor.clone(), ready.clone());
        tokio::spawn(async move {
            let _permit = permit;
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => {
                    let _ = ready.send(TlsConnection { stream, info }).await;
                }
                Ok(Err(error)) => debug!(%peer, %error, "TLS handshake failed"),
                Err(_) => debug!(%peer, "TLS handshake timed out"),
            }
        });
    }
}

/// One client connection over TLS, reporting its addresses like plain TCP.
pub struct TlsConnection {
    stream: TlsStream<TcpStream>,
    info: TcpConnectInfo,
}

impl Connected for TlsConnection {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.info.clone()
    }
}

impl AsyncRead for TlsConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConnection {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use livepush::cli_checks::{scratch_dir, scratch_file};
    use rustls::pki_types::PrivateKeyDer;

    #[test]
    fn bad_files_name_their_path_and_keys_stay_hidden() {
        let empty = scratch_file(&scratch_dir("livepush-tls-listener-unit"), "empty.pem", "");
        let empty = empty.to_str().unwrap();
        assert!(ServerCert::load(empty).unwrap_err().contains(empty));
        assert!(ServerKey::load(empty).unwrap_err().contains(empty));
        assert!(ServerCert::load("/nonexistent/cert.pem").is_err());
        let key = ServerKey(Arc::new(PrivateKeyDer::Pkcs8(vec![1, 2, 3].into())));
        assert_eq!(format!("{key:?}"), "ServerKey(<redacted>)");
    }
}
