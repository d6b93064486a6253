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

use std::sync::Arc;

/// The crypto provider every livepush TLS config is built with.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}
