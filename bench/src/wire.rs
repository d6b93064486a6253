//! Push parsers for what the load clients read off their sockets: HTTP/1.1
//! responses (head, then a chunked, sized or until-close body, several per
//! keep-alive connection) and `text/event-stream` bodies.
//!
//! Why not hyper and an SSE crate: with 15,000 connections in one process the
//! client's own memory and CPU must stay far below the edge's, or the figures
//! describe the load generator. These parsers are fed whatever one `read`
//! returned (from a buffer shared per thread), never copy a complete line, and
//! keep per connection only a partial line when a read splits one (usually
//! nothing). They check framing strictly (a bad chunk size or an oversized
//! head is an error, counted by the load generator) but understand only what
//! the benchmark needs from the payload: the event type and a
//! `"served_at_ms":<digits>` stamp in the data. Response heads, once
//! complete, are parsed by httparse.

use std::fmt;

/// Largest response head accepted.
pub const MAX_HEAD: usize = 16 * 1024;
/// Largest SSE line accepted.
pub const MAX_LINE: usize = 64 * 1024;

/// A framing or syntax error; the connection is unusable after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WireError(pub &'static str);

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for WireError {}

/// The parts of a response head the clients use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub status: u16,
    pub content_type: Option<String>,
    pub etag: Option<String>,
    /// `Connection: close` was sent.
    pub close: bool,
}

/// What [`ResponseParser::feed`] reports, in wire order.
#[derive(Debug, PartialEq, Eq)]
pub enum Item<'a> {
    Head(Head),
    /// Decoded body bytes (chunk framing removed).
    Body(&'a [u8]),
    /// The response is complete; the next bytes start a new response.
    End,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Body {
    /// Bytes left of a `Content-Length` body.
    Sized(u64),
    /// Until the server closes the connection.
    UntilClose,
    Chunked(Chunk),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Reading the hex size; `ext` once a `;` extension started.
    Size {
        size: u64,
        digits: u8,
        ext: bool,
    },
    /// `\r` after the size line seen, `\n` expected.
    SizeLf {
        size: u64,
    },
    Data {
        left: u64,
    },
    /// Expecting the `\r\n` that ends a chunk's data (`cr`: `\r` seen).
    DataEnd {
        cr: bool,
    },
    /// After the last chunk: trailer lines until an empty one. `blank`: the
    /// current line is empty so far; `cr`: its `\r` was seen.
    Trailer {
        blank: bool,
        cr: bool,
    },
}

#[derive(Debug)]
enum Phase {
    Head,
    Body(Body),
}

/// Parses consecutive HTTP/1.1 responses from a byte stream.
#[derive(Debug)]
pub struct ResponseParser {
    phase: Phase,
    /// The head so far (empty between heads; freed once parsed).
    head: Vec<u8>,
}

impl Default for ResponseParser {
    fn default() -> Self {
        Self::new()
    }
}

impl ResponseParser {
    pub fn new() -> Self {
        Self { phase: Phase::Head, head: Vec::new() }
    }

    /// Feeds bytes as they arrive; `on` gets the items they complete, and may
    /// stop parsing by returning an error, which `feed` returns.
    pub fn feed(
        &mut self,
        mut input: &[u8],
        on: &mut impl FnMut(Item<'_>) -> Result<(), WireError>,
    ) -> Result<(), WireError> {
        while !input.is_empty() {
            match &mut self.phase {
                Phase::Head => {
                    // Look for the blank line, including across reads.
                    let before = self.head.len();
                    let search_from = before.saturating_sub(3);
                    // Keep at most MAX_HEAD + 4 bytes: enough to find a
                    // blank line ending right at the limit.
                    let room = (MAX_HEAD + 4).saturating_sub(before);
                    self.head.extend_from_slice(&input[..input.len().min(room)]);
                    let Some(end) = find(&self.head[search_from..], b"\r\n\r\n").map(|i| search_from + i + 4)
                    else {
                        if self.head.len() > MAX_HEAD {
                            return Err(WireError("response head too large"));
                        }
                        return Ok(());
                    };
                    let consumed = end - before;
                    let (head, body) = parse_head(&self.head[..end])?;
                    self.head = Vec::new();
                    input = &input[consumed..];
                    on(Item::Head(head))?;
                    match body {
                        Some(body) => self.phase = Phase::Body(body),
                        None => on(Item::End)?,
                    }
                }
                Phase::Body(Body::Sized(left)) => {
                    let n = input.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
                    *left -= n as u64;
                    let done = *left == 0;
                    on(Item::Body(&input[..n]))?;
                    input = &input[n..];
                    if done {
                        self.phase = Phase::Head;
                        on(Item::End)?;
                    }
                }
                Phase::Body(Body::UntilClose) => {
                    on(Item::Body(input))?;
                    input = &[];
                }
                Phase::Body(Body::Chunked(chunk)) => {
                    if let Chunk::Data { left } = chunk {
                        let n = input.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
                        *left -= n as u64;
                        if *left == 0 {
                            *chunk = Chunk::DataEnd { cr: false };
                        }
                        on(Item::Body(&input[..n]))?;
                        input = &input[n..];
                        continue;
                    }
                    let byte = input[0];
                    input = &input[1..];
                    match chunk_byte(*chunk, byte)? {
                        Some(next) => *chunk = next,
                        None => {
                            self.phase = Phase::Head;
                            on(Item::End)?;
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// One framing byte of a chunked body; `None` once the body is complete.
fn chunk_byte(state: Chunk, b: u8) -> Result<Option<Chunk>, WireError> {
    Ok(Some(match state {
        Chunk::Size { size, digits, ext: false } if b.is_ascii_hexdigit() => {
            if digits >= 15 {
                return Err(WireError("chunk size too large"));
            }
            let d = u64::from(char::from(b).to_digit(16).unwrap_or(0));
            Chunk::Size { size: size * 16 + d, digits: digits + 1, ext: false }
        }
        Chunk::Size { size, digits, .. } if b == b'\r' && digits > 0 => Chunk::SizeLf { size },
        Chunk::Size { size, digits, .. } if b == b';' && digits > 0 => {
            Chunk::Size { size, digits, ext: true }
        }
        Chunk::Size { size, digits, ext: true } if b != b'\n' => Chunk::Size { size, digits, ext: true },
        Chunk::Size { .. } => return Err(WireError("bad chunk size line")),
        Chunk::SizeLf { size: 0 } if b == b'\n' => Chunk::Trailer { blank: true, cr: false },
        Chunk::SizeLf { size } if b == b'\n' => Chunk::Data { left: size },
        Chunk::SizeLf { .. } => return Err(WireError("chunk size line not ended by CRLF")),
        // Data bytes are consumed in bulk before this is called.
        Chunk::Data { .. } => return Err(WireError("chunk data in the framing path")),
        Chunk::DataEnd { cr: false } if b == b'\r' => Chunk::DataEnd { cr: true },
        Chunk::DataEnd { cr: true } if b == b'\n' => Chunk::Size { size: 0, digits: 0, ext: false },
        Chunk::DataEnd { .. } => return Err(WireError("chunk data not followed by CRLF")),
        Chunk::Trailer { blank, cr: false } if b == b'\r' => Chunk::Trailer { blank, cr: true },
        Chunk::Trailer { blank: true, cr: true } if b == b'\n' => return Ok(None),
        Chunk::Trailer { blank: false, cr: true } if b == b'\n' => Chunk::Trailer { blank: true, cr: false },
        Chunk::Trailer { cr: true, .. } => return Err(WireError("bad trailer line")),
        Chunk::Trailer { cr: false, .. } => Chunk::Trailer { blank: false, cr: false },
    }))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The head's figures and how its body is delimited (RFC 9112 §6.3; `None`:
/// no body).
fn parse_head(bytes: &[u8]) -> Result<(Head, Option<Body>), WireError> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut headers);
    if !matches!(response.parse(bytes), Ok(httparse::Status::Complete(_))) {
        return Err(WireError("bad response head"));
    }
    let status = response.code.ok_or(WireError("bad response head"))?;
    let mut head = Head { status, content_type: None, etag: None, close: false };
    let (mut length, mut chunked) = (None, false);
    for h in response.headers.iter() {
        let text = || String::from_utf8_lossy(h.value).into_owned();
        match h.name.to_ascii_lowercase().as_str() {
            "content-type" => head.content_type = Some(text()),
            "etag" => head.etag = Some(text()),
            "connection" => head.close = h.value.eq_ignore_ascii_case(b"close"),
            "transfer-encoding" => {
                let last = h.value.rsplit(|&b| b == b',').next().unwrap_or_default().trim_ascii();
                chunked = last.eq_ignore_ascii_case(b"chunked");
                if !chunked {
                    return Err(WireError("unsupported transfer-encoding"));
                }
            }
            "content-length" => {
                let n = std::str::from_utf8(h.value).ok().and_then(|v| v.parse::<u64>().ok());
                length = Some(n.ok_or(WireError("bad content-length"))?);
            }
            _ => {}
        }
    }
    let body = match (length, chunked) {
        _ if (100..200).contains(&status) || status == 204 || status == 304 => None,
        (_, true) => Some(Body::Chunked(Chunk::Size { size: 0, digits: 0, ext: false })),
        (Some(0), false) => None,
        (Some(n), false) => Some(Body::Sized(n)),
        (None, false) => Some(Body::UntilClose),
    };
    Ok((head, body))
}

/// The type of an SSE event, as far as the benchmark tells them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Unnamed (`message`): the media JSON.
    Message,
    Stale,
    Live,
    Presence,
    End,
    Other,
}

/// An event's own `id` field (the edge sends one with every data event).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Id {
    Missing,
    /// Not a decimal number.
    Bad,
    Value(u64),
}

/// What [`SseParser::feed`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SseItem {
    /// A dispatched event (one with data), its id and the `served_at_ms`
    /// stamp found in its data, if any.
    Event { kind: Kind, id: Id, stamp: Option<u64> },
    /// A `:` comment line (the edge's keep-alive).
    Comment,
}

/// Parses a `text/event-stream` body (WHATWG HTML, server-sent events):
/// lines end with CRLF, LF or CR; an empty line dispatches the event if it
/// has data.
#[derive(Debug)]
pub struct SseParser {
    /// A line split across reads (empty otherwise).
    partial: Vec<u8>,
    /// The last byte fed was a CR: a leading LF is its CRLF's second half.
    after_cr: bool,
    kind: Kind,
    id: Id,
    data_lines: u32,
    stamp: Option<u64>,
}

impl Default for SseParser {
    fn default() -> Self {
        Self::new()
    }
}

impl SseParser {
    pub fn new() -> Self {
        Self {
            partial: Vec::new(),
            after_cr: false,
            kind: Kind::Message,
            id: Id::Missing,
            data_lines: 0,
            stamp: None,
        }
    }

    pub fn feed(&mut self, mut input: &[u8], on: &mut impl FnMut(SseItem)) -> Result<(), WireError> {
        if self.after_cr {
            self.after_cr = false;
            if let Some(rest) = input.strip_prefix(b"\n") {
                input = rest;
            }
        }
        while let Some(end) = input.iter().position(|&b| b == b'\n' || b == b'\r') {
            if self.partial.is_empty() {
                self.line(&input[..end], on);
            } else {
                self.append(&input[..end])?;
                let line = std::mem::take(&mut self.partial);
                self.line(&line, on);
                // Keep a small buffer for the next split line, not a big one.
                if line.capacity() <= 1024 {
                    self.partial = line;
                    self.partial.clear();
                }
            }
            let crlf = input[end] == b'\r';
            input = &input[end + 1..];
            if crlf {
                match input.first() {
                    Some(b'\n') => input = &input[1..],
                    Some(_) => {}
                    None => self.after_cr = true,
                }
            }
        }
        self.append(input)
    }

    fn append(&mut self, bytes: &[u8]) -> Result<(), WireError> {
        if self.partial.len() + bytes.len() > MAX_LINE {
            return Err(WireError("SSE line too long"));
        }
        self.partial.extend_from_slice(bytes);
        Ok(())
    }

    fn line(&mut self, line: &[u8], on: &mut impl FnMut(SseItem)) {
        if line.is_empty() {
            if self.data_lines > 0 {
                on(SseItem::Event { kind: self.kind, id: self.id, stamp: self.stamp });
            }
            self.kind = Kind::Message;
            self.id = Id::Missing;
            self.data_lines = 0;
            self.stamp = None;
            return;
        }
        if line[0] == b':' {
            return on(SseItem::Comment);
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        match field {
            b"data" => {
                self.data_lines += 1;
                if self.stamp.is_none() {
                    self.stamp = find_stamp(value);
                }
            }
            b"event" => {
                self.kind = match value {
                    b"" | b"message" => Kind::Message,
                    b"stale" => Kind::Stale,
                    b"live" => Kind::Live,
                    b"presence" => Kind::Presence,
                    b"end" => Kind::End,
                    _ => Kind::Other,
                }
            }
            b"id" => {
                self.id =
                    std::str::from_utf8(value).ok().and_then(|v| v.parse().ok()).map_or(Id::Bad, Id::Value);
            }
            // retry and unknown fields do not matter here.
            _ => {}
        }
    }
}

/// The number after `"served_at_ms":` in a JSON text, if any.
pub fn find_stamp(json: &[u8]) -> Option<u64> {
    const KEY: &[u8] = b"\"served_at_ms\":";
    let at = find(json, KEY)? + KEY.len();
    let digits = json[at..].trim_ascii_start();
    let len = digits.iter().take_while(|b| b.is_ascii_digit()).count();
    if len == 0 || len > 19 {
        return None;
    }
    digits[..len].iter().try_fold(0u64, |n, d| n.checked_mul(10)?.checked_add(u64::from(d - b'0')))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `wire` in pieces of `step` bytes; returns the items as text.
    fn responses(wire: &[u8], step: usize) -> Result<Vec<String>, WireError> {
        let mut p = ResponseParser::new();
        let mut out = Vec::new();
        let mut body = Vec::new();
        for piece in wire.chunks(step) {
            p.feed(piece, &mut |item| {
                match item {
                    Item::Head(h) => out.push(format!("head {} {:?}", h.status, h.etag)),
                    Item::Body(b) => body.extend_from_slice(b),
                    Item::End => {
                        out.push(format!("end {}", String::from_utf8_lossy(&std::mem::take(&mut body))))
                    }
                }
                Ok(())
            })?;
        }
        if !body.is_empty() {
            out.push(format!("open {}", String::from_utf8_lossy(&body)));
        }
        Ok(out)
    }

    const SSE_HEAD: &[u8] =
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n";

    #[test]
    fn chunked_and_sized_keep_alive_responses_at_any_split() {
        let mut wire = Vec::new();
        wire.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nETag: \"e1\"\r\n\r\nhello");
        wire.extend_from_slice(b"HTTP/1.1 304 Not Modified\r\nETag: \"e1\"\r\n\r\n");
        wire.extend_from_slice(SSE_HEAD);
        wire.extend_from_slice(b"3;ext=1\r\nabc\r\nA\r\n0123456789\r\n0\r\nx-trailer: 1\r\n\r\n");
        let want = [
            "head 200 Some(\"\\\"e1\\\"\")",
            "end hello",
            "head 304 Some(\"\\\"e1\\\"\")",
            "end ",
            "head 200 None",
            "end abc0123456789",
        ];
        for step in [1, 2, 3, 7, 64, wire.len()] {
            assert_eq!(responses(&wire, step).unwrap(), want, "step {step}");
        }
    }

    #[test]
    fn an_open_chunked_stream_delivers_its_data() {
        let mut wire = SSE_HEAD.to_vec();
        wire.extend_from_slice(b"D\r\nretry: 3000\n\n\r\n");
        assert_eq!(responses(&wire, 5).unwrap(), ["head 200 None", "open retry: 3000\n\n"]);
    }

    #[test]
    fn framing_errors() {
        let bad = [
            &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"[..],
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nFFFFFFFFFFFFFFFFF\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
            b"SSH-2.0-OpenSSH\r\n\r\n",
            b"HTTP/1.1 20 OK\r\n\r\n",
        ];
        for wire in bad {
            assert!(responses(wire, 1).is_err(), "{}", String::from_utf8_lossy(wire));
        }
        let huge = [b"HTTP/1.1 200 OK\r\nx: ".to_vec(), vec![b'a'; MAX_HEAD]].concat();
        assert_eq!(responses(&huge, 1000), Err(WireError("response head too large")));
    }

    fn events(body: &[u8], step: usize) -> Vec<SseItem> {
        let mut p = SseParser::new();
        let mut out = Vec::new();
        for piece in body.chunks(step) {
            p.feed(piece, &mut |i| out.push(i)).unwrap();
        }
        out
    }

    #[test]
    fn sse_events_at_any_split_and_line_ending() {
        let body = b"retry: 3000\n\n:\n\nid: 7\ndata: {\"a\":1,\"served_at_ms\":1764064800123}\n\n\
            event: stale\r\ndata: {\"state\":\"stale\"}\r\n\r\n\
            event: presence\rid: x\rdata: {\"viewers\":3}\r\rdata:x\n\n";
        let want = [
            SseItem::Comment,
            SseItem::Event { kind: Kind::Message, id: Id::Value(7), stamp: Some(1_764_064_800_123) },
            SseItem::Event { kind: Kind::Stale, id: Id::Missing, stamp: None },
            SseItem::Event { kind: Kind::Presence, id: Id::Bad, stamp: None },
            SseItem::Event { kind: Kind::Message, id: Id::Missing, stamp: None },
        ];
        for step in 1..=body.len() {
            assert_eq!(events(body, step), want, "step {step}");
        }
    }

    #[test]
    fn overlong_lines_are_refused() {
        let mut p = SseParser::new();
        let long = vec![b'a'; MAX_LINE / 2 + 1];
        p.feed(&long, &mut |_| {}).unwrap();
        assert!(p.feed(&long, &mut |_| {}).is_err());
    }

    #[test]
    fn stamps() {
        assert_eq!(find_stamp(br#"{"served_at_ms":42}"#), Some(42));
        assert_eq!(find_stamp(br#"{"x":1, "served_at_ms": 7 }"#), Some(7));
        assert_eq!(find_stamp(br#"{"served_at_ms":"7"}"#), None);
        assert_eq!(find_stamp(br#"{"served_at_ms":99999999999999999999}"#), None);
        assert_eq!(find_stamp(b"{}"), None);
    }
}
