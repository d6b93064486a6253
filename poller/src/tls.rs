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

use rustls::pki_types::CertificateDer;
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

/// Declares the type of a private key flag (this one and `--tls-key`, see
/// `crate::tls_listener`): a PEM key read when the flag is parsed, with a
/// `Debug` that names the type and never shows the key.
macro_rules! private_key {
    ($(#[$attr:meta])* $name:ident) => {
        $(#[$attr])*
        #[derive(Clone)]
        pub struct $name(std::sync::Arc<rustls::pki_types::PrivateKeyDer<'static>>);

        impl $name {
            pub fn load(path: &str) -> Result<Self, String> {
                use rustls::pki_types::{PrivateKeyDer, pem::PemObject};
                let key = PrivateKeyDer::from_pem_file(path)
                    .map_err(|e| format!("{path}: no usable private key: {e}"))?;
                Ok(Self(std::sync::Arc::new(key)))
            }
        }

        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(concat!(stringify!($name), "(<redacted>)"))
            }
        }
    };
}
pub(crate) use private_key;

private_key! {
    /// The private key for `--media-client-cert` (`--media-client-key`).
    ClientKey
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
    use livepush::cli_checks::{scratch_dir, scratch_file};
    use rustls::pki_types::PrivateKeyDer;
    use std::sync::Arc;

    #[test]
    fn bad_key_files_are_refused_and_keys_never_shown() {
        let empty = scratch_file(&scratch_dir("livepush-tls-unit"), "empty.pem", "");
        assert!(ClientKey::load(empty.to_str().unwrap()).is_err());
        assert_eq!(
            format!("{:?}", ClientKey(Arc::new(PrivateKeyDer::Pkcs8(vec![1, 2, 3].into())))),
            "ClientKey(<redacted>)"
        );
    }
}
