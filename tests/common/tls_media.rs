//! The scripted media service of [`TestMedia`] served over TLS, with a test
//! certificate authority made at test time, so end-to-end tests can check the
//! poller as an HTTPS client: that it trusts a private CA, refuses an expired
//! or wrong-name certificate, presents a client certificate when the media
//! service demands one, and speaks HTTP/2 when ALPN offers it.
//!
//! Nothing here is a fixture on disk: certificates are minted per test with
//! rcgen, so none can expire under the test suite, and an expired one is
//! expired on purpose. The server certificate can be swapped while the server
//! runs ([`TlsMedia::set_leaf`]); only new handshakes see the new one, so a
//! client that keeps a pooled connection keeps talking over the old one.

use crate::media::TestMedia;
use axum::http::{Request, Version};
use hyper::{body::Incoming, service::Service as _};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
    service::TowerToHyperService,
};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, date_time_ymd,
};
use rustls::{
    ClientConfig, RootCertStore, ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer},
    server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier},
    sign::CertifiedKey,
};
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, PoisonError, RwLock,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// ALPN protocols both ends offer: HTTP/2 first, HTTP/1.1 for the rest.
fn alpn() -> Vec<Vec<u8>> {
    vec![b"h2".to_vec(), b"http/1.1".to_vec()]
}

/// Whether a leaf certificate is valid today.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Validity {
    /// Valid from 1975 to 4096 (rcgen's defaults).
    Valid,
    /// Valid only during 2020: expired, otherwise flawless.
    Expired,
}

/// A certificate authority minted at test time.
pub struct TestCa {
    name: String,
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate issued by a [`TestCa`], with its private key.
#[derive(Clone, Debug)]
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    cert_der: CertificateDer<'static>,
    key_der: Vec<u8>,
    stem: String,
}

/// Distinct file names for everything written into one directory.
fn stem(name: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let clean: String = name.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect();
    format!("{clean}-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

impl TestCa {
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate().expect("CA key");
        let issuer = CertifiedIssuer::self_signed(params, key).expect("CA certificate");
        Self { name: name.to_owned(), issuer }
    }

    pub fn ca_pem(&self) -> String {
        self.issuer.pem()
    }

    /// A trust store holding this CA alone.
    pub fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots.add(self.issuer.der().clone()).expect("CA certificate is well-formed");
        roots
    }

    /// Writes the CA certificate as PEM into `dir`; returns its path.
    pub fn write_ca(&self, dir: &Path) -> PathBuf {
        let path = dir.join(format!("{}-ca.pem", stem(&self.name)));
        std::fs::write(&path, self.ca_pem()).expect("write CA certificate");
        path
    }

    /// A server certificate for `names` (DNS names or IP addresses).
    pub fn leaf(&self, names: &[&str], validity: Validity) -> Leaf {
        let mut params = self.leaf_params(names);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        if validity == Validity::Expired {
            params.not_before = date_time_ymd(2020, 1, 1);
            params.not_after = date_time_ymd(2020, 12, 31);
        }
        self.issue(params, names.first().copied().unwrap_or("leaf"))
    }

    /// A client certificate (extended key usage clientAuth) named `name`.
    pub fn client_leaf(&self, name: &str) -> Leaf {
        let mut params = self.leaf_params(&[]);
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(params, name)
    }

    /// A client config trusting this CA alone, offering `h2` and `http/1.1`,
    /// presenting `identity` when given.
    pub fn client_config(&self, identity: Option<&Leaf>) -> ClientConfig {
        let builder = ClientConfig::builder_with_provider(livepush::tls::provider())
            .with_safe_default_protocol_versions()
            .expect("provider supports the default versions")
            .with_root_certificates(self.roots());
        let mut config = match identity {
            Some(leaf) => {
                builder.with_client_auth_cert(vec![leaf.cert_der()], leaf.key_der()).expect("client identity")
            }
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = alpn();
        config
    }

    fn leaf_params(&self, names: &[&str]) -> CertificateParams {
        let sans = names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>();
        let mut params = CertificateParams::new(sans).expect("valid certificate names");
        params.distinguished_name = rcgen::DistinguishedName::new();
        if let Some(first) = names.first() {
            params.distinguished_name.push(DnType::CommonName, *first);
        }
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        params
    }

    fn issue(&self, params: CertificateParams, name: &str) -> Leaf {
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("leaf certificate");
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_der: cert.der().clone(),
            key_der: key.serialize_der(),
            stem: stem(name),
        }
    }
}

impl Leaf {
    /// Writes certificate and key as PEM into `dir`; returns their paths.
    pub fn write(&self, dir: &Path) -> (PathBuf, PathBuf) {
        let cert = dir.join(format!("{}-cert.pem", self.stem));
        let key = dir.join(format!("{}-key.pem", self.stem));
        std::fs::write(&cert, &self.cert_pem).expect("write certificate");
        std::fs::write(&key, &self.key_pem).expect("write key");
        (cert, key)
    }

    pub fn cert_der(&self) -> CertificateDer<'static> {
        self.cert_der.clone()
    }

    pub fn key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()))
    }

    fn certified(&self) -> Arc<CertifiedKey> {
        let provider = livepush::tls::provider();
        let key = CertifiedKey::from_der(vec![self.cert_der()], self.key_der(), &provider);
        Arc::new(key.expect("certificate and key match"))
    }
}

/// Hands every new handshake whatever certificate is current.
#[derive(Debug)]
struct CurrentLeaf(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for CurrentLeaf {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().unwrap_or_else(PoisonError::into_inner).clone())
    }
}

#[derive(Default)]
struct TlsState {
    /// Bumped by `set_leaf`: open connections close, so the next request
    /// must handshake with the new certificate (clients pool connections).
    generation: tokio::sync::watch::Sender<u64>,
    versions: Mutex<Vec<Version>>,
    handshakes_ok: AtomicUsize,
    handshakes_failed: AtomicUsize,
}

/// [`TestMedia`]'s app over TLS on `127.0.0.1`. Scripts and counts through
/// [`TestMedia`]'s methods (it derefs to one); `template()` and
/// `heartbeat_template()` are its own, with `https://localhost`.
#[derive(Clone)]
pub struct TlsMedia {
    pub addr: SocketAddr,
    media: TestMedia,
    leaf: Arc<CurrentLeaf>,
    state: Arc<TlsState>,
}

impl std::ops::Deref for TlsMedia {
    type Target = TestMedia;
    fn deref(&self) -> &TestMedia {
        &self.media
    }
}

impl TlsMedia {
    /// Serves with `leaf` as the server certificate; no client certificate asked.
    pub async fn start(leaf: &Leaf) -> Self {
        Self::serve(leaf, None).await
    }

    /// Serves with `leaf`, and refuses handshakes without a client
    /// certificate issued by `client_ca`.
    pub async fn start_with_client_auth(leaf: &Leaf, client_ca: &TestCa) -> Self {
        Self::serve(leaf, Some(client_ca)).await
    }

    async fn serve(leaf: &Leaf, client_ca: Option<&TestCa>) -> Self {
        let provider = livepush::tls::provider();
        let current = Arc::new(CurrentLeaf(RwLock::new(leaf.certified())));
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("provider supports the default versions");
        let builder = match client_ca {
            Some(ca) => {
                let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(ca.roots()), provider)
                    .build()
                    .expect("client verifier");
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_cert_resolver(current.clone());
        config.alpn_protocols = alpn();
        // Every connection does a full handshake: a resumed session would
        // skip the certificate a test has just swapped in.
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;

        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("bound address");
        let (media, app) = TestMedia::app_at(addr);
        let state = Arc::new(TlsState::default());
        let acceptor = TlsAcceptor::from(Arc::new(config));
        tokio::spawn(accept(listener, acceptor, TowerToHyperService::new(app), state.clone()));
        Self { addr, media, leaf: current, state }
    }

    /// Makes `leaf` the server certificate for every handshake from now on,
    /// and closes the open connections so that clients handshake again.
    pub fn set_leaf(&self, leaf: &Leaf) {
        *self.leaf.0.write().unwrap_or_else(PoisonError::into_inner) = leaf.certified();
        self.state.generation.send_modify(|g| *g += 1);
    }

    /// `--media-url` for the poller (the name the certificates carry).
    pub fn template(&self) -> String {
        format!("https://localhost:{}/live/{{event_id}}", self.addr.port())
    }

    /// `--heartbeat-url` for the poller.
    pub fn heartbeat_template(&self) -> String {
        format!("https://localhost:{}/presence/{{event_id}}", self.addr.port())
    }

    /// The HTTP version of every request received (any path), in order.
    pub fn versions(&self) -> Vec<Version> {
        self.state.versions.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// TLS handshakes that completed.
    pub fn handshakes_ok(&self) -> usize {
        self.state.handshakes_ok.load(Ordering::SeqCst)
    }

    /// Connections whose TLS handshake failed (either side gave up).
    pub fn handshakes_failed(&self) -> usize {
        self.state.handshakes_failed.load(Ordering::SeqCst)
    }
}

type App = TowerToHyperService<axum::Router>;

async fn accept(listener: TcpListener, acceptor: TlsAcceptor, app: App, state: Arc<TlsState>) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else { continue };
        let (acceptor, app, state) = (acceptor.clone(), app.clone(), state.clone());
        let mut generation = state.generation.subscribe();
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                state.handshakes_failed.fetch_add(1, Ordering::SeqCst);
                return;
            };
            state.handshakes_ok.fetch_add(1, Ordering::SeqCst);
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                state.versions.lock().unwrap_or_else(PoisonError::into_inner).push(request.version());
                app.call(request)
            });
            // HTTP/1.1 or HTTP/2, told apart by the client's first bytes
            // (which follow what ALPN agreed).
            let builder = auto::Builder::new(TokioExecutor::new());
            tokio::select! {
                _ = builder.serve_connection(TokioIo::new(tls), service) => {}
                _ = generation.changed() => {}
            }
        });
    }
}
