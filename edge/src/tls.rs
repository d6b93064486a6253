//! TLS for the edge (rustls with the workspace's provider, [`livepush::tls`]), offering HTTP/2 and
//! HTTP/1.1 through ALPN: over h2 one browser's many `EventSource`s share one
//! connection instead of hitting the six-connections-per-host cap of HTTP/1.1.

use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use std::{path::Path, sync::Arc};
use tokio_rustls::TlsAcceptor;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("--tls-cert {path}: {source}")]
    Cert { path: String, source: rustls::pki_types::pem::Error },
    #[error("--tls-cert {0}: no certificate found")]
    NoCert(String),
    #[error("--tls-key {path}: {source}")]
    Key { path: String, source: rustls::pki_types::pem::Error },
    #[error("--tls-cert/--tls-key: {0}")]
    Config(#[from] rustls::Error),
}

/// Builds the acceptor from PEM files.
pub fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, TlsError> {
    let cert_path = cert.display().to_string();
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|source| TlsError::Cert { path: cert_path.clone(), source })?;
    if certs.is_empty() {
        return Err(TlsError::NoCert(cert_path));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|source| TlsError::Key { path: key.display().to_string(), source })?;
    let mut config = rustls::ServerConfig::builder_with_provider(livepush::tls::provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
