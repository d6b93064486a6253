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

use rustls::{
    RootCertStore,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
};
use std::sync::Arc;
use tracing::{info, warn};

/// Extra trust anchors from `--media-ca`: a PEM file with one or more CA
/// certificates.
#[derive(Clone, Debug)]
pub struct CaBundle {
    path: String,
    certs: Vec<CertificateDer<'static>>,
}

impl CaBundle {
    /// Reads and checks the bundle (the `--media-ca` value parser).
    pub fn load(path: &str) -> Result<Self, String> {
        let certs = read_certs(path)?;
        // Adding them to a store is the check that each one is a usable
        // trust anchor, not just a PEM block.
        let mut store = RootCertStore::empty();
        for (i, cert) in certs.iter().enumerate() {
            store
                .add(cert.clone())
                .map_err(|e| format!("{path}: certificate {} is not a usable CA: {e}", i + 1))?;
        }
        Ok(Self { path: path.to_owned(), certs })
    }
}

/// The certificate chain presented to media services that require mutual
/// TLS (`--media-client-cert`).
#[derive(Clone, Debug)]
pub struct ClientCert {
    certs: Vec<CertificateDer<'static>>,
}

impl ClientCert {
    pub fn load(path: &str) -> Result<Self, String> {
        Ok(Self { certs: read_certs(path)? })
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

/// Where the trust anchors besides `--media-ca` came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootsSource {
    /// The system's store.
    System,
    /// The system had none: the roots built into the binary.
    Bundled,
}

/// The client configuration for every upstream request: the roots above,
/// HTTP/2 or HTTP/1.1 by ALPN, and the client identity if one was given.
pub fn client_config(
    ca: Option<&CaBundle>,
    identity: Option<(&ClientCert, &ClientKey)>,
) -> Result<rustls::ClientConfig, IdentityError> {
    let native = rustls_native_certs::load_native_certs();
    for error in native.errors.iter().take(3) {
        warn!(%error, "reading the system's trust store");
    }
    let (mut roots, source) = roots(native.certs);
    let system_roots = roots.len();
    if let Some(ca) = ca {
        for cert in &ca.certs {
            roots.add(cert.clone()).expect("checked when --media-ca was parsed");
        }
    }
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

/// The system's roots, or the bundled ones when the system offers none that
/// parse (a distroless or scratch image).
fn roots(system: Vec<CertificateDer<'static>>) -> (RootCertStore, RootsSource) {
    let mut store = RootCertStore::empty();
    store.add_parsable_certificates(system);
    if store.is_empty() {
        store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        return (store, RootsSource::Bundled);
    }
    (store, RootsSource::System)
}

pub(crate) fn read_certs(path: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{path}: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{path}: no PEM certificate found"));
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_system_store_falls_back_to_the_bundled_roots() {
        let (store, source) = roots(vec![]);
        assert_eq!(source, RootsSource::Bundled);
        assert!(store.len() > 100, "{}", store.len());
        let (_, source) = roots(vec![CertificateDer::from(b"not DER".to_vec())]);
        assert_eq!(source, RootsSource::Bundled, "unparsable system certificates count as none");
    }

    #[test]
    fn bad_files_are_refused() {
        let dir = std::env::temp_dir().join(format!("livepush-tls-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let junk = dir.join("junk.pem");
        std::fs::write(&junk, "-----BEGIN CERTIFICATE-----\n@@@\n-----END CERTIFICATE-----\n").unwrap();
        for path in [empty.to_str().unwrap(), junk.to_str().unwrap(), "/nonexistent/ca.pem"] {
            let err = CaBundle::load(path).unwrap_err();
            assert!(err.contains(path), "{err}");
        }
        assert!(ClientKey::load(empty.to_str().unwrap()).is_err());
        assert_eq!(
            format!("{:?}", ClientKey(Arc::new(PrivateKeyDer::Pkcs8(vec![1, 2, 3].into())))),
            "ClientKey(<redacted>)"
        );
    }
}
