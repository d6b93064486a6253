//! The workspace's one TLS stack: rustls with the aws-lc-rs crypto provider.
//!
//! Why this one: it is reqwest's own default, so every reqwest client in the
//! workspace (the poller's, and any a test or tool builds) finds a provider
//! without a process-wide `CryptoProvider::install_default`, which is what
//! broke the first attempt at HTTPS upstreams (two crates choosing different
//! providers make rustls refuse to pick one). aws-lc-sys builds with the C
//! compiler alone: no OpenSSL, no cmake, no protoc. Our own TLS configs
//! never rely on a process default either: they are built with
//! [`provider`] explicitly.

use rustls::{
    RootCertStore,
    pki_types::{CertificateDer, pem::PemObject},
};
use std::sync::Arc;
use tracing::warn;

/// The crypto provider every livepush TLS config is built with.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Extra trust anchors (`--media-ca`, `--poller-ca`): a PEM file with one or
/// more CA certificates, read and checked when the flag is parsed so a bad
/// file stops start-up naming it.
#[derive(Clone, Debug)]
pub struct CaBundle {
    pub path: String,
    certs: Vec<CertificateDer<'static>>,
}

impl CaBundle {
    /// Reads and checks the bundle (the flag's value parser).
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

/// Every certificate of a PEM file (at least one); errors name the path.
pub fn read_certs(path: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{path}: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{path}: no PEM certificate found"));
    }
    Ok(certs)
}

/// Where the trust anchors besides the extra bundle came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootsSource {
    /// The system's store.
    System,
    /// The system had none: the roots built into the binary.
    Bundled,
}

/// What a client verifies servers against: the system's store (Debian's
/// `ca-certificates`, or what `SSL_CERT_FILE` / `SSL_CERT_DIR` name), or
/// the Mozilla roots built into the binary when the system has none (a
/// distroless or scratch image), plus `extra`. Also how many came from the
/// system or the binary, and which. Nothing here can turn verification off.
pub fn roots(extra: Option<&CaBundle>) -> (RootCertStore, usize, RootsSource) {
    let native = rustls_native_certs::load_native_certs();
    for error in native.errors.iter().take(3) {
        warn!(%error, "reading the system's trust store");
    }
    let (mut store, source) = system_or_bundled(native.certs);
    let base = store.len();
    for cert in extra.map(|e| e.certs.as_slice()).unwrap_or_default() {
        store.add(cert.clone()).expect("checked when the bundle was loaded");
    }
    (store, base, source)
}

fn system_or_bundled(system: Vec<CertificateDer<'static>>) -> (RootCertStore, RootsSource) {
    let mut store = RootCertStore::empty();
    store.add_parsable_certificates(system);
    if store.is_empty() {
        store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        return (store, RootsSource::Bundled);
    }
    (store, RootsSource::System)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli_checks::{scratch_dir, scratch_file};

    #[test]
    fn an_empty_system_store_falls_back_to_the_bundled_roots() {
        let (store, source) = system_or_bundled(vec![]);
        assert_eq!(source, RootsSource::Bundled);
        assert!(store.len() > 100, "{}", store.len());
        let (_, source) = system_or_bundled(vec![CertificateDer::from(b"not DER".to_vec())]);
        assert_eq!(source, RootsSource::Bundled, "unparsable system certificates count as none");
    }

    #[test]
    fn bad_ca_files_are_refused_naming_their_path() {
        let dir = scratch_dir("livepush-ca-unit");
        let empty = scratch_file(&dir, "empty.pem", "");
        let junk =
            scratch_file(&dir, "junk.pem", "-----BEGIN CERTIFICATE-----\n@@@\n-----END CERTIFICATE-----\n");
        for path in [empty.to_str().unwrap(), junk.to_str().unwrap(), "/nonexistent/ca.pem"] {
            let err = CaBundle::load(path).unwrap_err();
            assert!(err.contains(path), "{err}");
        }
    }
}
