//! The edge's connection layer: accepts TCP (and TLS), serves each connection
//! with HTTP/1.1 or HTTP/2, and drains gracefully.
//!
//! Written on hyper-util instead of `axum::serve` because the edge needs what
//! that convenience does not offer: TLS with ALPN, a write-stall timeout per
//! socket, bounded request heads, a hard ceiling on open sockets, and the
//! peer address for per-client limits.

use crate::{lean, write_timeout::WriteTimeout};
use axum::{Router, extract::ConnectInfo};
use hyper::{Request, body::Incoming};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto, graceful::GracefulShutdown},
    service::TowerToHyperService,
};
use livepush::metrics::GaugeGuard;
use std::{net::SocketAddr, sync::Arc, time::Duration};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpListener,
    sync::Semaphore,
};
use tokio_rustls::TlsAcceptor;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tower_service::Service;
use tracing::{debug, warn};

/// Sockets allowed beyond `--max-connections`: room for refused requests to
/// get their 503, health checks and HTTP/2 connections that carry no stream,
/// while staying under the process's open-file limit.
const SOCKET_HEADROOM: usize = 1000;
/// A client must send its request head within this long.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Bounds the request line plus headers of HTTP/1.1 (hyper's minimum is 8 KiB).
const MAX_HEAD_BYTES: usize = 16 * 1024;
const MAX_HEADERS: usize = 64;
/// HTTP/2 streams per connection: a page opens a handful of EventSources.
const H2_MAX_STREAMS: u32 = 128;
/// PINGs on idle HTTP/2 connections find dead peers.
const H2_KEEPALIVE: Duration = Duration::from_secs(20);
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

pub struct ServerOptions {
    pub tls: Option<TlsAcceptor>,
    pub write_timeout: Duration,
    pub max_connections: usize,
}

/// Serves `app` on `listener` until `stop` is cancelled, then waits up to
/// `drain` for open connections to finish.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    opts: ServerOptions,
    stop: CancellationToken,
    drain: Duration,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEAD_BYTES)
        .max_headers(MAX_HEADERS);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(H2_MAX_STREAMS)
        .max_header_list_size(MAX_HEAD_BYTES as u32)
        .keep_alive_interval(H2_KEEPALIVE);
    // Over plain TCP only HTTP/1.1 is offered: browsers speak HTTP/2 only
    // over TLS, and skipping the h2c preface sniffing saves every connection
    // a rewind buffer and state. SSE streams skip hyper altogether (see
    // `lean`). Over TLS, ALPN picks the protocol.
    let plain = Arc::new(builder.clone().http1_only());
    let builder = Arc::new(builder);
    let sockets = Arc::new(Semaphore::new(opts.max_connections + SOCKET_HEADROOM));
    let graceful = GracefulShutdown::new();
    // Every connection's task (plain TCP, whose SSE streams `lean` serves
    // unwatched by `graceful`, and TLS): the drain waits for these too.
    let tasks = TaskTracker::new();
    let metrics = livepush::metrics::edge();

    loop {
        let (tcp, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // EMFILE and friends: wait for connections to close rather
                    // than spin or exit.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = sockets.clone().try_acquire_owned() else {
            metrics.rejected_socket_ceiling.increment(1);
            debug!(%peer, "socket ceiling reached; closing new connection");
            continue;
        };
        metrics.connections_accepted.increment(1);
        // Held with the socket's slot: the connection counts as open until
        // its task ends.
        let slot = (slot, GaugeGuard::new(&metrics.connections_open));
        let _ = tcp.set_nodelay(true);
        let io = WriteTimeout::new(tcp, opts.write_timeout);
        let app = app.clone();
        match &opts.tls {
            None => {
                let plain = plain.clone();
                let watcher = graceful.watcher();
                let stop = stop.clone();
                tasks.spawn(async move {
                    let _slot = slot;
                    let mut io = io;
                    let first = tokio::select! {
                        _ = stop.cancelled() => return,
                        first = lean::read_first(&mut io, MAX_HEAD_BYTES, HEADER_READ_TIMEOUT, peer) => first,
                    };
                    match first {
                        lean::First::Gone => {}
                        lean::First::Stream(request) => {
                            // Held for the stream's whole life otherwise.
                            drop((plain, watcher));
                            lean::respond(&mut io, app, request).await;
                        }
                        lean::First::Other(head) => {
                            // Boxed: hyper's connection state is large, and
                            // inline it would size every connection's task,
                            // SSE streams' included.
                            Box::pin(async move {
                                let io = TokioIo::new(lean::Rewind::new(head, io));
                                let conn = plain.serve_connection(io, connection_service(app, peer));
                                if let Err(e) = watcher.watch(conn).await {
                                    debug!(%peer, error = %e, "connection ended with an error");
                                }
                            })
                            .await
                        }
                    }
                });
            }
            Some(tls) => {
                let tls = tls.clone();
                let builder = builder.clone();
                let watcher = graceful.watcher();
                let stop = stop.clone();
                // Owned like the plain connections: the drain waits for
                // (and a stop ends) handshakes in progress too.
                tasks.spawn(async move {
                    let _slot = slot;
                    let handshake = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, tls.accept(io));
                    let stream = match tokio::select! {
                        _ = stop.cancelled() => return,
                        h = handshake => h,
                    } {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(e)) => return debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => return debug!(%peer, "TLS handshake timed out"),
                    };
                    serve_one(&builder, stream, connection_service(app, peer), watcher, peer).await;
                });
            }
        }
    }
    drop(listener);
    tasks.close();
    let drained = async { tokio::join!(graceful.shutdown(), tasks.wait()) };
    if tokio::time::timeout(drain, drained).await.is_err() {
        warn!(timeout = ?drain, "connections still open at the shutdown deadline; closing them");
    }
}

async fn serve_one<I>(
    builder: &auto::Builder<TokioExecutor>,
    io: I,
    service: ConnService,
    watcher: hyper_util::server::graceful::Watcher,
    peer: SocketAddr,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // No upgrades (the edge has no WebSockets): less state per connection.
    let conn = builder.serve_connection(TokioIo::new(io), service);
    if let Err(e) = watcher.watch(conn).await {
        debug!(%peer, error = %e, "connection ended with an error");
    }
}

type ConnService = TowerToHyperService<AddPeer>;

/// The router with the peer address attached to every request, as axum's
/// `ConnectInfo` extractor expects.
fn connection_service(app: Router, peer: SocketAddr) -> ConnService {
    TowerToHyperService::new(AddPeer { app, peer })
}

#[derive(Clone)]
pub struct AddPeer {
    app: Router,
    peer: SocketAddr,
}

impl Service<Request<Incoming>> for AddPeer {
    type Response = <Router as Service<Request<Incoming>>>::Response;
    type Error = <Router as Service<Request<Incoming>>>::Error;
    type Future = <Router as Service<Request<Incoming>>>::Future;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        Service::<Request<Incoming>>::poll_ready(&mut self.app, cx)
    }

    fn call(&mut self, mut req: Request<Incoming>) -> Self::Future {
        req.extensions_mut().insert(ConnectInfo(self.peer));
        self.app.call(req)
    }
}
