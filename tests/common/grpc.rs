//! gRPC clients of the poller as other services would build them: plain h2c
//! or TLS (a rustls connector of the tests' own, trusting a [`TestCa`],
//! independent of the edge's), with or without a bearer token, so the
//! poller's doors are checked from outside.
//!
//! [`TestCa`]: crate::tls_media::TestCa

use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use std::{future::Future, net::SocketAddr, pin::Pin, sync::Arc, time::Duration};
use tokio::net::TcpStream;
use tonic::{
    Request, Status,
    codegen::Service,
    metadata::{Ascii, MetadataValue},
    service::{Interceptor, interceptor::InterceptedService},
    transport::{Channel, Endpoint, Uri},
};

/// A channel that presents `token` (if any) on every call.
pub type Authed = InterceptedService<Channel, Bearer>;

/// Adds `authorization: Bearer TOKEN` to every call.
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// `channel`, presenting `token` on every call (none: no header).
pub fn with_token(channel: Channel, token: Option<&str>) -> Authed {
    let value = token.map(|t| format!("Bearer {t}").parse().expect("a header value"));
    InterceptedService::new(channel, Bearer(value))
}

/// A plain (h2c) channel to the poller at `addr`, connecting on first use.
pub fn plain(addr: SocketAddr) -> Channel {
    endpoint(format!("http://{addr}")).connect_lazy()
}

/// A TLS channel to the poller at `addr`, verifying its certificate for
/// `name` with `config` (e.g. [`TestCa::client_config`]); connects on first
/// use, so a failing handshake shows as the first call's error.
///
/// [`TestCa::client_config`]: crate::tls_media::TestCa::client_config
pub fn tls(addr: SocketAddr, name: &str, mut config: rustls::ClientConfig) -> Channel {
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = Connector {
        addr,
        name: ServerName::try_from(name.to_owned()).expect("a server name"),
        tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
    };
    endpoint(format!("https://{addr}")).connect_with_connector_lazy(connector)
}

fn endpoint(uri: String) -> Endpoint {
    Endpoint::from_shared(uri).expect("a valid URI").connect_timeout(Duration::from_secs(5))
}

#[derive(Clone)]
struct Connector {
    addr: SocketAddr,
    name: ServerName<'static>,
    tls: tokio_rustls::TlsConnector,
}

type Io = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;

impl Service<Uri> for Connector {
    type Response = Io;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<Io>> + Send>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        let (addr, name, tls) = (self.addr, self.name.clone(), self.tls.clone());
        Box::pin(async move {
            let tcp = TcpStream::connect(addr).await?;
            Ok(TokioIo::new(tls.connect(name, tcp).await?))
        })
    }
}

/// The services the poller's reflection (v1alpha, what grpcurl 1.8 asks)
/// lists, sorted.
pub async fn reflected_services<S>(channel: S) -> Vec<String>
where
    S: tonic::client::GrpcService<tonic::body::Body> + Send,
    S::Error: Into<tonic::codegen::StdError>,
    S::ResponseBody: tonic::codegen::Body<Data = bytes::Bytes> + Send + 'static,
    <S::ResponseBody as tonic::codegen::Body>::Error: Into<tonic::codegen::StdError> + Send,
{
    use tonic_reflection::pb::v1alpha::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let mut client = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = client
        .server_reflection_info(tokio_stream::once(request))
        .await
        .expect("reflection answers")
        .into_inner();
    let answer = answers.message().await.expect("a reflection answer").expect("one message");
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("not a service list: {answer:?}");
    };
    let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    names.sort();
    names
}
