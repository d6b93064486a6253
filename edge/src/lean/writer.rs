//! The lean path's writer: an SSE stream's response head, then each shared
//! frame as one chunk with a vectored write, no copy and no buffer kept
//! between frames.

use axum::{Router, body::Body};
use http_body_util::BodyExt;
use hyper::{Request, header};
use std::io::{self, IoSlice};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tower_service::Service;

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
