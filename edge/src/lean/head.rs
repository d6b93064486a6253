//! The first request head of a plain-TCP connection: read into a
//! short-lived buffer, bounded, and sorted into an SSE stream's `GET` (the
//! lean path) or anything else (handed to hyper with the bytes read, see
//! [`Rewind`]).

use axum::{body::Body, extract::ConnectInfo};
use bytes::Bytes;
use hyper::{Request, header};
use std::{
    io::{self, IoSlice},
    net::SocketAddr,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// What the first request head of a connection turned out to be.
pub enum First {
    /// The client closed (or sent nothing in time): nothing to answer.
    Gone,
    /// An SSE stream request, ready for the router.
    Stream(Box<Request<Body>>),
    /// Anything else: these bytes were read and belong to hyper.
    Other(Bytes),
}

/// Reads the first request head (at most `max_head` bytes, within `timeout`).
pub async fn read_first<I: AsyncRead + Unpin>(
    io: &mut I,
    max_head: usize,
    timeout: Duration,
    peer: SocketAddr,
) -> First {
    let mut buf = Vec::with_capacity(1024);
    let read_head = async {
        loop {
            if buf.len() >= max_head {
                return Some(Head::Other);
            }
            if buf.capacity() == buf.len() {
                buf.reserve(buf.len().min(max_head - buf.len()));
            }
            match io.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
            match classify(&buf, peer) {
                Head::Partial => {}
                head => return Some(head),
            }
        }
    };
    // Closed, failed or silent before a complete head: hyper would only
    // close it too (an incomplete head gets no answer).
    match tokio::time::timeout(timeout, read_head).await {
        Ok(Some(Head::Stream(request))) => First::Stream(request),
        Ok(Some(_)) => First::Other(Bytes::from(buf)),
        Ok(None) | Err(_) => First::Gone,
    }
}

/// What the bytes read so far are.
enum Head {
    /// Not a complete head yet.
    Partial,
    /// Exactly one bodiless HTTP/1.1 `GET /live/{id}/stream` or `/live/stream`.
    Stream(Box<Request<Body>>),
    /// Anything else, complete or malformed: hyper's.
    Other,
}

/// Headers of a stream request handled here; more go to hyper, which
/// enforces its own limit.
const MAX_HEADERS: usize = 64;

/// Parses `buf` once per read: a stream request is handled here only if it
/// is exactly one bodiless HTTP/1.1 `GET /live/{id}/stream` or `GET
/// /live/stream` (query allowed)
/// and nothing follows it.
fn classify(buf: &[u8], peer: SocketAddr) -> Head {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    match parsed.parse(buf) {
        Ok(httparse::Status::Partial) => Head::Partial,
        Ok(httparse::Status::Complete(len)) if len == buf.len() => {
            stream_request(&parsed, peer).map_or(Head::Other, |r| Head::Stream(Box::new(r)))
        }
        _ => Head::Other,
    }
}

fn stream_request(parsed: &httparse::Request<'_, '_>, peer: SocketAddr) -> Option<Request<Body>> {
    let path = parsed.path?;
    let route = path.split('?').next().unwrap_or_default();
    let is_stream = route == "/live/stream"
        || (route.starts_with("/live/") && route.ends_with("/stream") && route.len() > "/live//stream".len());
    if parsed.method? != "GET" || parsed.version? != 1 || !is_stream {
        return None;
    }
    let mut request = Request::get(path).version(hyper::Version::HTTP_11);
    for h in parsed.headers.iter() {
        let name = header::HeaderName::from_bytes(h.name.as_bytes()).ok()?;
        // A body, an upgrade or an expectation: not this path's business.
        if [header::CONTENT_LENGTH, header::TRANSFER_ENCODING, header::UPGRADE, header::EXPECT]
            .contains(&name)
        {
            return None;
        }
        request = request.header(name, header::HeaderValue::from_bytes(h.value).ok()?);
    }
    let mut request = request.body(Body::empty()).ok()?;
    request.extensions_mut().insert(ConnectInfo(peer));
    Some(request)
}

/// A connection whose first bytes were already read: hyper reads them first.
pub struct Rewind<I> {
    prefix: Bytes,
    inner: I,
}

impl<I> Rewind<I> {
    pub fn new(prefix: Bytes, inner: I) -> Self {
        Self { prefix, inner }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Rewind<I> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix.split_to(n));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Rewind<I> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    fn peer() -> SocketAddr {
        "127.0.0.1:1".parse().unwrap()
    }

    #[test]
    fn only_plain_stream_gets_take_the_lean_path() {
        let ok = b"GET /live/m-1/stream?vid=a HTTP/1.1\r\nHost: x\r\nLast-Event-ID: 5\r\n\r\n";
        let Head::Stream(req) = classify(ok, peer()) else { panic!("a stream request") };
        assert_eq!(req.uri(), "/live/m-1/stream?vid=a");
        assert_eq!(req.headers()["last-event-id"], "5");
        assert!(req.extensions().get::<ConnectInfo<SocketAddr>>().is_some());
        let multi = b"GET /live/stream?event=a&event=b HTTP/1.1\r\nHost: x\r\n\r\n";
        let Head::Stream(req) = classify(multi, peer()) else { panic!("a multi-event stream request") };
        assert_eq!(req.uri(), "/live/stream?event=a&event=b");
        for other in [
            &b"GET /live/m-1/stream HTTP/1.0\r\n\r\n"[..],
            b"POST /live/m-1/stream HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
            b"GET /live/m-1/stream HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET /live/m-1/stream HTTP/1.1\r\nUpgrade: websocket\r\n\r\n",
            b"GET /live//stream HTTP/1.1\r\n\r\n",
            b"GET /healthz HTTP/1.1\r\n\r\n",
            b"GET /live/m-1/stream HTTP/1.1\r\n\r\nGET /healthz HTTP/1.1\r\n\r\n",
            b"GET /live/m-1/stream HTTP/1.1\r\nBad Header\r\n\r\n",
            b"GET /live/m-1/stream HTTP/1.1\r\n",
        ] {
            assert!(
                !matches!(classify(other, peer()), Head::Stream(_)),
                "{}",
                String::from_utf8_lossy(other)
            );
        }
    }

    #[tokio::test]
    async fn rewind_serves_the_prefix_then_the_socket() {
        let (mut a, b) = tokio::io::duplex(64);
        a.write_all(b"world").await.unwrap();
        drop(a);
        let mut r = Rewind::new(Bytes::from_static(b"hello "), b);
        let mut out = String::new();
        r.read_to_string(&mut out).await.unwrap();
        assert_eq!(out, "hello world");
    }

    #[tokio::test]
    async fn heads_are_read_whole_and_bounded() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        a.write_all(b"GET /live/e/stream HTTP/1.1\r\n").await.unwrap();
        a.write_all(b"Host: x\r\n\r\n").await.unwrap();
        assert!(matches!(
            read_first(&mut b, 16 << 10, Duration::from_secs(5), peer()).await,
            First::Stream(_)
        ));
        // Larger than the bound: handed over as is (hyper answers 431).
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        let big = format!("GET /live/e/stream HTTP/1.1\r\nX: {}\r\n", "y".repeat(20_000));
        a.write_all(big.as_bytes()).await.unwrap();
        match read_first(&mut b, 16 << 10, Duration::from_secs(5), peer()).await {
            First::Other(bytes) => assert!(bytes.len() >= 16 << 10 && bytes.len() < 17 << 10),
            _ => panic!("an oversized head must go to hyper"),
        }
        // Silence: given up after the timeout.
        let (_a, mut b) = tokio::io::duplex(64);
        assert!(matches!(read_first(&mut b, 1024, Duration::from_millis(50), peer()).await, First::Gone));
    }
}
