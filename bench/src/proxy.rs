//! A byte-counting TCP relay in front of media-sim, so the `polling`
//! scenario measures the bytes the media service sends and receives in both
//! setups the same way, at the same place: browsers polling it directly, or
//! the poller polling it on their behalf. (media-sim counts requests itself,
//! at `GET /stats`, but not bytes.)
//!
//! It counts payload bytes (HTTP requests and responses, heads included), not
//! TCP/IP overhead. Every relayed connection is a task owned by the proxy and
//! aborted when it stops; connections are capped.

use anyhow::Context;
use std::{
    net::{Ipv4Addr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream, tcp::OwnedReadHalf, tcp::OwnedWriteHalf},
    sync::Semaphore,
    task::JoinSet,
};
use tokio_util::sync::CancellationToken;

/// Relay buffer per direction.
const BUF: usize = 8 * 1024;

#[derive(Debug, Default)]
pub struct Counters {
    /// Bytes sent to the upstream (requests).
    pub to_upstream: AtomicU64,
    /// Bytes received from the upstream (responses).
    pub from_upstream: AtomicU64,
    /// Connections accepted.
    pub connections: AtomicU64,
}

pub struct Proxy {
    pub addr: SocketAddr,
    pub counters: Arc<Counters>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Listens on a free loopback port and relays every connection to
    /// `upstream`; at most `max_connections` at once (more wait).
    pub async fn start(upstream: SocketAddr, max_connections: usize) -> anyhow::Result<Self> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.context("binding the proxy")?;
        let addr = listener.local_addr().context("proxy address")?;
        let counters = Arc::new(Counters::default());
        let stop = CancellationToken::new();
        let task = tokio::spawn(accept(listener, upstream, counters.clone(), stop.clone(), max_connections));
        Ok(Self { addr, counters, stop, task })
    }

    /// (to upstream, from upstream) bytes so far.
    pub fn bytes(&self) -> (u64, u64) {
        (self.counters.to_upstream.load(Relaxed), self.counters.from_upstream.load(Relaxed))
    }

    pub async fn stop(mut self) {
        self.stop.cancel();
        let _ = (&mut self.task).await;
    }
}

impl Drop for Proxy {
    /// On error paths (or Ctrl-C) the relays stop with the proxy.
    fn drop(&mut self) {
        self.stop.cancel();
        self.task.abort();
    }
}

async fn accept(
    listener: TcpListener,
    upstream: SocketAddr,
    counters: Arc<Counters>,
    stop: CancellationToken,
    max_connections: usize,
) {
    let slots = Arc::new(Semaphore::new(max_connections.max(1)));
    let mut relays = JoinSet::new();
    loop {
        let slot = tokio::select! {
            _ = stop.cancelled() => break,
            s = slots.clone().acquire_owned() => match s { Ok(s) => s, Err(_) => break },
        };
        let client = tokio::select! {
            _ = stop.cancelled() => break,
            a = listener.accept() => match a {
                Ok((client, _)) => client,
                Err(e) => {
                    eprintln!("proxy: accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        counters.connections.fetch_add(1, Relaxed);
        let counters = counters.clone();
        relays.spawn(async move {
            let _slot = slot;
            // A failed relay closes both sides; the client sees and counts it.
            let _ = relay(client, upstream, &counters).await;
        });
        // Reap finished relays so the set stays as small as the open ones.
        while relays.try_join_next().is_some() {}
    }
    relays.shutdown().await;
}

async fn relay(client: TcpStream, upstream: SocketAddr, counters: &Counters) -> std::io::Result<()> {
    let server = TcpStream::connect(upstream).await?;
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    tokio::try_join!(pump(cr, sw, &counters.to_upstream), pump(sr, cw, &counters.from_upstream))?;
    Ok(())
}

async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, count: &AtomicU64) -> std::io::Result<()> {
    let mut buf = vec![0; BUF];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return to.shutdown().await;
        }
        count.fetch_add(n as u64, Relaxed);
        to.write_all(&buf[..n]).await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn relays_and_counts_both_directions() {
        let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let echo_addr = echo.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = echo.accept().await.unwrap();
            let mut buf = [0; 5];
            s.read_exact(&mut buf).await.unwrap();
            s.write_all(b"pong!pong!").await.unwrap();
        });
        let proxy = Proxy::start(echo_addr, 4).await.unwrap();
        let mut c = TcpStream::connect(proxy.addr).await.unwrap();
        c.write_all(b"ping!").await.unwrap();
        let mut got = Vec::new();
        c.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"pong!pong!");
        assert_eq!(proxy.bytes(), (5, 10));
        assert_eq!(proxy.counters.connections.load(Relaxed), 1);
        proxy.stop().await;
    }
}
