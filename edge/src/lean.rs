//! A lean HTTP/1.1 path for the one request that stays open: the SSE stream.
//!
//! hyper gives every HTTP/1.1 connection an 8 KiB read buffer and an 8 KiB
//! write buffer for its whole life (its minimum), which made up most of the
//! edge's ~14 KiB per idle SSE connection. An SSE connection reads one request
//! and then only writes frames that are already encoded and shared by every
//! browser, so it needs neither buffer. For plain-TCP connections the edge
//! therefore reads the first request head itself into a short-lived buffer:
//!
//! - a plain `GET /live/{id}/stream` (or a multi-event `GET /live/stream`)
//!   over HTTP/1.1 with no body goes through
//!   the same axum router (validation, limits, CORS, `Last-Event-ID`), and
//!   the response is written here: the head, then each shared frame as one
//!   chunk with a vectored write, no copy, no buffer kept between frames;
//!   the connection closes when the stream ends;
//! - anything else (other paths, methods, versions, bodies, pipelined bytes,
//!   malformed or oversized heads) goes to hyper with the bytes already
//!   read, so it is answered exactly as before.

use axum::{Router, body::Body, extract::ConnectInfo};
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::{Request, header};
use std::{
    io::{self, IoSlice},
    net::SocketAddr,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tower_service::Service;

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

/// Line breaks a client may send after its request head (RFC 9112 asks
/// servers to tolerate an empty line around requests); anything more, or
/// anything else, closes the stream.
const MAX_STRAY_BYTES: usize = 4;

/// Answers `request` through `app` and writes the response on `io`; the
/// connection is done afterwards.
///
/// Only the body outlives the head: the request, the router handle and the
/// response headers are dropped before streaming starts, because whatever
/// this future holds across its awaits is held for the life of the stream.
pub async fn respond<I: AsyncRead + AsyncWrite + Unpin>(
    io: &mut I,
    app: Router,
    request: Box<Request<Body>>,
) {
    // Boxed: the router's future, the request and the response's headers
    // are needed only until the head is written, and held inline they would
    // size this future (so the stream's state) for its whole life.
    let (head, body) = Box::pin(answer(app, request)).await;
    if io.write_all(&head).await.is_err() {
        return;
    }
    drop(head);
    let Some((mut body, length)) = body else {
        let _ = io.shutdown().await;
        return;
    };
    // The only reads from here on look for the client going away (EOF). An
    // SSE client sends nothing after its GET (browsers do not pipeline), so
    // anything beyond a stray line break or two is a client misbehaving, and
    // reading it 16 bytes at a time for the life of the stream would let it
    // burn our CPU: the connection is closed instead.
    let mut probe = [0u8; 16];
    let mut stray = 0usize;
    loop {
        // The frame is matched in the statement that awaits it, so none of
        // it (a frame can hold trailers) is kept across the write below.
        let data = match tokio::select! {
            frame = body.frame() => frame,
            read = io.read(&mut probe) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    stray += n;
                    if stray > MAX_STRAY_BYTES || probe[..n].iter().any(|b| !matches!(b, b'\r' | b'\n')) {
                        return;
                    }
                    continue;
                }
            },
        } {
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) if !data.is_empty() => data,
                _ => continue,
            },
            // The body failed: end without the last chunk, so the client
            // sees the response as cut short.
            Some(Err(_)) => return,
            None => break,
        };
        let written = if length.is_some() {
            write_all_vectored(io, &mut [IoSlice::new(&data)]).await
        } else {
            let size = chunk_size_line(data.len());
            write_all_vectored(
                io,
                &mut [IoSlice::new(size.as_bytes()), IoSlice::new(&data), IoSlice::new(b"\r\n")],
            )
            .await
        };
        if written.is_err() {
            return;
        }
    }
    if length.is_none() {
        let _ = io.write_all(b"0\r\n\r\n").await;
    }
    let _ = io.shutdown().await;
}

/// The response's head and, unless its status has none, its body with its
/// exact length when known.
async fn answer(mut app: Router, request: Box<Request<Body>>) -> (Vec<u8>, Option<(Body, Option<u64>)>) {
    let Ok(response) = app.call(*request).await;
    let (parts, body) = response.into_parts();
    let length = http_body::Body::size_hint(&body).exact();
    let head = head(&parts, length);
    (head, (!no_body(parts.status)).then_some((body, length)))
}

/// Statuses whose answers have no body and so no framing headers.
fn no_body(status: hyper::StatusCode) -> bool {
    status == hyper::StatusCode::NO_CONTENT
        || status == hyper::StatusCode::NOT_MODIFIED
        || status.is_informational()
}

/// The status line and headers, with the framing this writer uses.
fn head(parts: &hyper::http::response::Parts, length: Option<u64>) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    let reason = parts.status.canonical_reason().unwrap_or("");
    out.extend_from_slice(format!("HTTP/1.1 {} {reason}\r\n", parts.status.as_u16()).as_bytes());
    for (name, value) in &parts.headers {
        if name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING || name == header::CONNECTION {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    match length {
        // RFC 9110: a 204 (or 304) carries no Content-Length and no body.
        _ if no_body(parts.status) => {}
        Some(n) => out.extend_from_slice(format!("content-length: {n}\r\n").as_bytes()),
        None => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    out.extend_from_slice(b"connection: close\r\n\r\n");
    out
}

/// `{len:x}\r\n` without allocating.
fn chunk_size_line(len: usize) -> ChunkSize {
    let mut buf = [0u8; 18];
    let digits = if len == 0 { 1 } else { (usize::BITS - len.leading_zeros()).div_ceil(4) as usize };
    for (i, byte) in buf.iter_mut().enumerate().take(digits) {
        *byte = b"0123456789abcdef"[(len >> (4 * (digits - 1 - i))) & 0xf];
    }
    buf[digits] = b'\r';
    buf[digits + 1] = b'\n';
    ChunkSize { buf, len: digits + 2 }
}

struct ChunkSize {
    buf: [u8; 18],
    len: usize,
}

impl ChunkSize {
    fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// Writes every slice, one syscall for all of them when the socket takes it.
async fn write_all_vectored<W: AsyncWrite + Unpin>(
    io: &mut W,
    mut bufs: &mut [IoSlice<'_>],
) -> io::Result<()> {
    IoSlice::advance_slices(&mut bufs, 0);
    while !bufs.is_empty() {
        let n = io.write_vectored(bufs).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut bufs, n);
    }
    Ok(())
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

    #[test]
    fn stream_state_size() {
        // What every SSE connection holds for its whole life (see
        // BENCHMARKS.md, memory per connection): printed, not asserted, as
        // it depends on the compiler.
        let (mut io, _peer) = tokio::io::duplex(64);
        let request = Box::new(Request::new(Body::empty()));
        let respond = respond(&mut io, Router::new(), request);
        println!("lean::respond future: {} bytes", std::mem::size_of_val(&respond));
    }

    #[test]
    fn chunk_size_lines_are_lowercase_hex() {
        for (len, line) in [(0, "0\r\n"), (9, "9\r\n"), (10, "a\r\n"), (255, "ff\r\n"), (4096, "1000\r\n")] {
            assert_eq!(chunk_size_line(len).as_bytes(), line.as_bytes());
        }
        assert_eq!(chunk_size_line(usize::MAX).as_bytes(), b"ffffffffffffffff\r\n");
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
