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
//!
//! [`head`] reads and sorts the first request head; [`writer`] answers a
//! stream's request and writes its frames.

mod head;
mod writer;

pub use head::{First, Rewind, read_first};
pub use writer::respond;
