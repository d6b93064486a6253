//! How the poller trusts the services it calls (the media service and
//! `--heartbeat-url`): one rustls client configuration, built once at
//! start-up and shared by every request.
//!
//! Trust is the system's store (Debian's `ca-certificates`, or whatever
//! `SSL_CERT_FILE` / `SSL_CERT_DIR` name) plus any `--media-ca` bundle. A
//! container image with no store at all still verifies public services: the
//! Mozilla roots compiled into the binary (webpki-roots) stand in for an
//! empty system store. Nothing here can turn verification off.
//!
//! Files are read when the flags are parsed, so a bad path or PEM stops
//! start-up with an error naming the flag, not the first poll.

use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use std::sync::Arc;
use tracing::info;

/// Extra trust anchors from `--media-ca` (see [`livepush::tls::CaBundle`]).
pub use livepush::tls::CaBundle;

/// The certificate chain presented to media services that require mutual
/// TLS (`--media-client-cert`).
#[derive(Clone, Debug)]
pub struct ClientCert {
    certs: Vec<CertificateDer<'static>>,
}

impl ClientCert {
    pub fn load(path: &str) -> Result<Self, String> {
        Ok(Self { certs: livepush::tls::read_certs(path)? })
    }
}

/// The private key for `--media-client-cert` (`--media-client-key`). Its
/// `Debug` never shows the key.
#[derive(Clone)]
pub struct ClientKey(Arc<PrivateKeyDer<'static>>);

impl ClientKey {
    pub fn load(path: &str) -> Result<Self, String> {
        let key =
            PrivateKeyDer::from_pem_file(path).map_err(|e| format!("{path}: no usable private key: {e}"))?;
        Ok(Self(Arc::new(key)))
    }
}

impl std::fmt::Debug for ClientKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientKey(<redacted>)")
    }
}

/// A client certificate and key that do not go together, or that rustls
/// cannot use.
#[derive(Debug, thiserror::Error)]
#[error("--media-client-cert/--media-client-key: {0}")]
pub struct IdentityError(#[source] rustls::Error);

/// The client configuration for every upstream request: the roots above,
/// HTTP/2 or HTTP/1.1 by ALPN, and the client identity if one was given.
pub fn client_config(
    ca: Option<&CaBundle>,
    identity: Option<(&ClientCert, &ClientKey)>,
) -> Result<rustls::ClientConfig, IdentityError> {
    let (roots, system_roots, source) = livepush::tls::roots(ca);
    info!(roots = system_roots, ?source, media_ca = ca.map(|c| c.path.as_str()), "upstream TLS trust");
    let builder = rustls::ClientConfig::builder_with_provider(livepush::tls::provider())
        .with_safe_default_protocol_versions()
        .expect("the provider supports the default protocol versions")
        .with_root_certificates(roots);
    let mut config = match identity {
        Some((cert, key)) => {
            builder.with_client_auth_cert(cert.certs.clone(), key.0.clone_key()).map_err(IdentityError)?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_key_files_are_refused_and_keys_never_shown() {
        let dir = std::env::temp_dir().join(format!("livepush-tls-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        assert!(ClientKey::load(empty.to_str().unwrap()).is_err());
        assert_eq!(
            format!("{:?}", ClientKey(Arc::new(PrivateKeyDer::Pkcs8(vec![1, 2, 3].into())))),
            "ClientKey(<redacted>)"
        );
    }
}
