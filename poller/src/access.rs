//! Who may call what on the gRPC port, with `--clients-file`: a tower layer
//! in front of every service that checks `authorization: Bearer TOKEN`
//! against the [`Clients`] and the method against the client's role, and
//! hands the services the [`Caller`] (in the request's extensions) so they
//! can bound and attribute per client.
//!
//! | method | needs |
//! |---|---|
//! | `livepush.v1.LiveFeed/Subscribe` | role `edge` or `reader` |
//! | `livepush.v1.Presence/ReportHeartbeats` | role `edge` |
//! | `livepush.v1.Presence/GetPresence`, `WatchPresence` | role `reader` |
//! | `livepush.v1.LiveFeed/Publish` | the publish token (checked by the service) |
//! | any other `livepush.*` method | any known token (then UNIMPLEMENTED) |
//! | `grpc.health.v1.Health/*`, reflection, `GET /metrics` | nothing |
//!
//! Health and reflection stay open because their callers carry no token:
//! Kubernetes' gRPC probes, and grpcurl inspecting the API. They reveal
//! nothing but the schema and whether the poller serves.
//!
//! A call without a known token gets UNAUTHENTICATED, a client whose role
//! does not allow the method PERMISSION_DENIED; both before the service sees
//! the request. Refusals are counted by reason and logged with the client's
//! name and the peer, never the token (at most one warning per reason per
//! [`LOG_EVERY`]: an edge with a wrong token retries thousands of events).
//! Without a clients file the layer is not installed at all.

use crate::clients::{Caller, Clients, Role};
use axum::http::{Request, Response, header::AUTHORIZATION};
use futures_util::future::{Either, Ready, ready};
use std::{
    sync::Mutex,
    task::{Context, Poll},
    time::{Duration, Instant},
};
use tonic::{Status, transport::server::TcpConnectInfo};
use tower_layer::Layer;
use tower_service::Service;
use tracing::{debug, warn};

/// At most one warning per refusal reason this often; the rest go to debug
/// (the metric counts every one).
pub const LOG_EVERY: Duration = Duration::from_secs(60);

/// The roles that may call `path`, `Some(&[])` for any known client, `None`
/// for everyone (no token needed).
fn allowed(path: &str) -> Option<&'static [Role]> {
    match path {
        "/livepush.v1.LiveFeed/Subscribe" => Some(&[Role::Edge, Role::Reader]),
        "/livepush.v1.Presence/ReportHeartbeats" => Some(&[Role::Edge]),
        "/livepush.v1.Presence/GetPresence" | "/livepush.v1.Presence/WatchPresence" => Some(&[Role::Reader]),
        // Needs the publish token instead, checked by the service.
        "/livepush.v1.LiveFeed/Publish" => None,
        // Methods added later are closed until listed above.
        p if p.starts_with("/livepush.") => Some(&[]),
        _ => None,
    }
}

/// Why a call was refused: the `reason` label of
/// `livepush_poller_auth_refusals_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Refusal {
    /// No `authorization: Bearer …` header (UNAUTHENTICATED).
    MissingToken,
    /// A token the clients file does not list (UNAUTHENTICATED).
    UnknownToken,
    /// A known client whose role does not allow the method
    /// (PERMISSION_DENIED).
    WrongRole,
}

impl Refusal {
    const ALL: [Refusal; 3] = [Self::MissingToken, Self::UnknownToken, Self::WrongRole];

    fn label(self) -> &'static str {
        match self {
            Self::MissingToken => "missing_token",
            Self::UnknownToken => "unknown_token",
            Self::WrongRole => "wrong_role",
        }
    }
}

/// The layer; cheap to clone.
#[derive(Clone)]
pub struct AccessLayer {
    clients: Clients,
    log: std::sync::Arc<LogOnce>,
}

impl AccessLayer {
    pub fn new(clients: Clients) -> Self {
        Self { clients, log: Default::default() }
    }
}

impl<S> Layer<S> for AccessLayer {
    type Service = Access<S>;

    fn layer(&self, inner: S) -> Access<S> {
        Access { inner, layer: self.clone() }
    }
}

/// The layer's service around `S`.
#[derive(Clone)]
pub struct Access<S> {
    inner: S,
    layer: AccessLayer,
}

impl<S, B, R> Service<Request<B>> for Access<S>
where
    S: Service<Request<B>, Response = Response<R>>,
    R: Default,
{
    type Response = Response<R>;
    type Error = S::Error;
    type Future = Either<Ready<Result<Response<R>, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let Some(roles) = allowed(request.uri().path()) else {
            return Either::Right(self.inner.call(request));
        };
        match self.layer.check(&request, roles) {
            Ok(caller) => {
                request.extensions_mut().insert(caller);
                Either::Right(self.inner.call(request))
            }
            Err(status) => Either::Left(ready(Ok(status.into_http()))),
        }
    }
}

impl AccessLayer {
    /// The caller of `request` if its token and role allow the call.
    fn check<B>(&self, request: &Request<B>, roles: &[Role]) -> Result<Caller, Status> {
        let method = request.uri().path();
        let peer = request.extensions().get::<TcpConnectInfo>().and_then(TcpConnectInfo::remote_addr);
        let refuse = |refusal: Refusal, client: Option<&Caller>, status: Status| {
            let refusals = &livepush::metrics::poller().auth_refusals;
            let counter = match refusal {
                Refusal::MissingToken => &refusals.missing_token,
                Refusal::UnknownToken => &refusals.unknown_token,
                Refusal::WrongRole => &refusals.wrong_role,
            };
            counter.increment(1);
            let (reason, client) = (refusal.label(), client.map(|c| &*c.name));
            if self.log.should_warn(refusal) {
                warn!(
                    reason,
                    method,
                    ?peer,
                    client,
                    "gRPC call refused (more for this reason within a minute go to debug)"
                );
            } else {
                debug!(reason, method, ?peer, client, "gRPC call refused");
            }
            status
        };
        let Some(token) = bearer(request) else {
            let status = Status::unauthenticated("this poller wants `authorization: Bearer TOKEN`");
            return Err(refuse(Refusal::MissingToken, None, status));
        };
        let Some(caller) = self.clients.identify(token) else {
            return Err(refuse(Refusal::UnknownToken, None, Status::unauthenticated("unknown token")));
        };
        if !roles.contains(&caller.role) {
            let status = Status::permission_denied(format!(
                "client {} (role {}) may not call {method}",
                caller.name,
                caller.role.as_str()
            ));
            return Err(refuse(Refusal::WrongRole, Some(&caller), status));
        }
        Ok(caller)
    }
}

/// The token of `authorization: Bearer TOKEN`.
fn bearer<B>(request: &Request<B>) -> Option<&str> {
    livepush::bearer::from_header(request.headers().get(AUTHORIZATION)?.to_str().ok()?)
}

/// When each refusal reason was last logged at warn.
#[derive(Default)]
struct LogOnce {
    last: Mutex<[Option<Instant>; Refusal::ALL.len()]>,
}

impl LogOnce {
    fn should_warn(&self, refusal: Refusal) -> bool {
        let i = Refusal::ALL.iter().position(|r| *r == refusal).expect("every reason is listed");
        let now = Instant::now();
        let mut last = livepush::sync::lock(&self.last, "auth refusal log");
        if last[i].is_some_and(|at| now.duration_since(at) < LOG_EVERY) {
            return false;
        }
        last[i] = Some(now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clients::ClientTable;
    use std::convert::Infallible;

    const EDGE: &str = "edge-token-0123456789";
    const READER: &str = "reader-token-0123456789";

    /// A service answering 200 with the caller it was handed.
    #[derive(Clone)]
    struct Echo;

    impl Service<Request<()>> for Echo {
        type Response = Response<String>;
        type Error = Infallible;
        type Future = Ready<Result<Response<String>, Infallible>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, request: Request<()>) -> Self::Future {
            let caller = request.extensions().get::<Caller>().map(|c| c.name.to_string());
            ready(Ok(Response::new(caller.unwrap_or_default())))
        }
    }

    /// (grpc-status or None for a pass, the name the service saw)
    async fn call(path: &str, authorization: Option<&str>) -> (Option<String>, String) {
        let table = ClientTable::parse(&format!("{EDGE} edge edge-pool\n{READER} reader dash\n")).unwrap();
        let mut service = AccessLayer::new(Clients::fixed(table)).layer(Echo);
        let mut request = Request::builder().uri(path);
        if let Some(value) = authorization {
            request = request.header(AUTHORIZATION, value);
        }
        let response = service.call(request.body(()).unwrap()).await.unwrap();
        let status = response.headers().get("grpc-status").map(|v| v.to_str().unwrap().to_owned());
        (status, response.into_body())
    }

    #[tokio::test]
    async fn roles_decide_and_the_caller_reaches_the_service() {
        const OK: Option<&str> = None;
        const UNAUTHENTICATED: Option<&str> = Some("16");
        const PERMISSION_DENIED: Option<&str> = Some("7");
        let edge = format!("Bearer {EDGE}");
        let reader = format!("bearer  {READER}");
        for (path, auth, expect, seen) in [
            ("/livepush.v1.LiveFeed/Subscribe", None, UNAUTHENTICATED, ""),
            ("/livepush.v1.LiveFeed/Subscribe", Some("Bearer nope-nope-nope-nope"), UNAUTHENTICATED, ""),
            ("/livepush.v1.LiveFeed/Subscribe", Some(EDGE), UNAUTHENTICATED, ""),
            ("/livepush.v1.LiveFeed/Subscribe", Some(&format!("Basic {EDGE}")[..]), UNAUTHENTICATED, ""),
            ("/livepush.v1.LiveFeed/Subscribe", Some(&edge[..]), OK, "edge-pool"),
            ("/livepush.v1.LiveFeed/Subscribe", Some(&reader[..]), OK, "dash"),
            ("/livepush.v1.Presence/ReportHeartbeats", Some(&edge[..]), OK, "edge-pool"),
            ("/livepush.v1.Presence/ReportHeartbeats", Some(&reader[..]), PERMISSION_DENIED, ""),
            ("/livepush.v1.Presence/GetPresence", Some(&edge[..]), PERMISSION_DENIED, ""),
            ("/livepush.v1.Presence/GetPresence", Some(&reader[..]), OK, "dash"),
            ("/livepush.v1.Presence/WatchPresence", Some(&reader[..]), OK, "dash"),
            ("/livepush.v1.Presence/Unknown", Some(&reader[..]), PERMISSION_DENIED, ""),
            ("/livepush.v1.Presence/Unknown", None, UNAUTHENTICATED, ""),
            ("/grpc.health.v1.Health/Check", None, OK, ""),
            ("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", None, OK, ""),
            ("/metrics", None, OK, ""),
        ] {
            let (status, name) = call(path, auth).await;
            assert_eq!((status.as_deref(), name.as_str()), (expect, seen), "{path} {auth:?}");
        }
    }
}
