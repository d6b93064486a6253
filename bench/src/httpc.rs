//! A one-shot HTTP/1.1 GET or POST over loopback, for the harness's own
//! questions to the processes it runs (`/readyz` of an edge, `/stats` of
//! media-sim) and for publishing to nchan.
//!
//! Tiny on purpose: the bench crate has no HTTP client dependency, and these
//! requests must not share anything (pools, connections) with the load being
//! measured. Every call is bounded by a timeout and a body size.

use crate::wire::{Item, ResponseParser, WireError};
use anyhow::{Context, bail};
use std::{net::SocketAddr, time::Duration};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// Largest body read.
const MAX_BODY: usize = 1 << 20;

/// `GET path` on `addr` with `Connection: close`: the status and the body.
pub async fn get(addr: SocketAddr, path: &str, timeout: Duration) -> anyhow::Result<(u16, String)> {
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    tokio::time::timeout(timeout, exchange(addr, request.into_bytes()))
        .await
        .with_context(|| format!("GET http://{addr}{path} took longer than {timeout:?}"))?
        .with_context(|| format!("GET http://{addr}{path}"))
}

/// `POST path` of `body` (as `application/json`) on `addr` with
/// `Connection: close`: the status and the body of the answer.
pub async fn post_json(
    addr: SocketAddr,
    path: &str,
    body: &str,
    timeout: Duration,
) -> anyhow::Result<(u16, String)> {
    post_json_with(addr, path, &[], body, timeout).await
}

/// [`post_json`] with extra `headers` (name, value), e.g. an
/// `Authorization` for the poller's change hints.
pub async fn post_json_with(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
    timeout: Duration,
) -> anyhow::Result<(u16, String)> {
    let extra: String = headers.iter().map(|(name, value)| format!("{name}: {value}\r\n")).collect();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n{extra}\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    tokio::time::timeout(timeout, exchange(addr, request.into_bytes()))
        .await
        .with_context(|| format!("POST http://{addr}{path} took longer than {timeout:?}"))?
        .with_context(|| format!("POST http://{addr}{path}"))
}

async fn exchange(addr: SocketAddr, request: Vec<u8>) -> anyhow::Result<(u16, String)> {
    let mut tcp = TcpStream::connect(addr).await.context("connecting")?;
    tcp.write_all(&request).await.context("sending the request")?;
    let mut parser = ResponseParser::new();
    let (mut status, mut body, mut done) = (None, Vec::new(), false);
    let mut buf = vec![0; 16 * 1024];
    while !done {
        let n = tcp.read(&mut buf).await.context("reading the answer")?;
        if n == 0 {
            if status.is_some() && parser.at_clean_close() {
                break;
            }
            bail!("connection closed before the answer was complete");
        }
        parser.feed(&buf[..n], &mut |item| {
            match item {
                Item::Head(head) => status = Some(head.status),
                Item::Body(b) if body.len() + b.len() <= MAX_BODY => body.extend_from_slice(b),
                Item::Body(_) => return Err(WireError("body too large")),
                Item::End => done = true,
            }
            Ok(())
        })?;
    }
    let status = status.context("no status")?;
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    #[tokio::test]
    async fn reads_status_and_body() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut req = [0; 512];
            let n = s.read(&mut req).await.unwrap();
            assert!(req[..n].starts_with(b"GET /stats HTTP/1.1\r\n"));
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 15\r\n\r\n{\"requests\":42}").await.unwrap();
        });
        let (status, body) = get(addr, "/stats", Duration::from_secs(2)).await.unwrap();
        assert_eq!((status, body.as_str()), (200, r#"{"requests":42}"#));
        server.await.unwrap();
    }

    #[tokio::test]
    async fn posts_a_json_body() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut req = Vec::new();
            let mut buf = [0; 512];
            while !req.ends_with(b"{\"a\":1}") {
                let n = s.read(&mut buf).await.unwrap();
                assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&req));
                req.extend_from_slice(&buf[..n]);
            }
            let req = String::from_utf8(req).unwrap();
            assert!(req.starts_with("POST /pub HTTP/1.1\r\n"), "{req}");
            assert!(req.contains("\r\nContent-Length: 7\r\n"), "{req}");
            assert!(req.contains("\r\nContent-Type: application/json\r\n"), "{req}");
            s.write_all(b"HTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok").await.unwrap();
        });
        let (status, body) = post_json(addr, "/pub", r#"{"a":1}"#, Duration::from_secs(2)).await.unwrap();
        assert_eq!((status, body.as_str()), (201, "ok"));
        server.await.unwrap();
    }
}
