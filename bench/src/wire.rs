//! Push parsers for what the load clients read: HTTP/1.1 responses (several
//! per keep-alive connection) and `text/event-stream` bodies. Fed whatever
//! one `read` returned, they keep per connection only a partial line when a
//! read splits one, so 15,000 clients stay far cheaper than the edge they
//! measure. Framing is checked strictly (httparse for heads and chunk sizes);
//! of the payload only the event type, id and `served_at_ms` stamp are read.

use httparse::{EMPTY_HEADER, Status};

/// Largest response head (or framing line) accepted.
const MAX_HEAD: usize = 16 * 1024;
/// Largest SSE line accepted.
const MAX_LINE: usize = 64 * 1024;

/// A framing or syntax error; the connection is unusable after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WireError(pub &'static str);

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
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
    /// Body bytes, chunk framing removed.
    Body(&'a [u8]),
    /// The response is complete; the next bytes start a new one.
    End,
}

#[derive(Debug, Clone, Copy, Default)]
enum Phase {
    #[default]
    Head,
    /// Bytes left of a `Content-Length` body.
    Sized(u64),
    UntilClose,
    /// A chunk size line, after `skip` bytes (the CRLF ending the previous chunk).
    Size {
        skip: usize,
    },
    /// Bytes left of a chunk's data.
    Chunk(u64),
    /// Trailer fields after the last chunk.
    Trailer,
}

/// Parses consecutive HTTP/1.1 responses from a byte stream.
#[derive(Debug, Default)]
pub struct ResponseParser {
    phase: Phase,
    /// A head or framing line split across reads (empty otherwise).
    pending: Vec<u8>,
}

type Parsed<T> = Result<Option<(usize, T)>, WireError>;

impl ResponseParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds bytes as they arrive; `on` gets the items they complete and may
    /// stop parsing with an error, which `feed` returns.
    pub fn feed(
        &mut self,
        mut input: &[u8],
        on: &mut impl FnMut(Item<'_>) -> Result<(), WireError>,
    ) -> Result<(), WireError> {
        while !input.is_empty() {
            match self.phase {
                Phase::Head => {
                    let Some((head, body)) = self.framed(&mut input, parse_head)? else { continue };
                    on(Item::Head(head))?;
                    self.phase = body;
                    if let Phase::Head = body {
                        on(Item::End)?;
                    }
                }
                Phase::Sized(left) | Phase::Chunk(left) => {
                    let n = input.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                    let left = left - n as u64;
                    self.phase = match self.phase {
                        Phase::Chunk(_) if left == 0 => Phase::Size { skip: 2 },
                        Phase::Chunk(_) => Phase::Chunk(left),
                        _ if left == 0 => Phase::Head,
                        _ => Phase::Sized(left),
                    };
                    on(Item::Body(&input[..n]))?;
                    input = &input[n..];
                    if let Phase::Head = self.phase {
                        on(Item::End)?;
                    }
                }
                Phase::UntilClose => {
                    on(Item::Body(input))?;
                    input = &[];
                }
                Phase::Size { skip } => {
                    if let Some(size) = self.framed(&mut input, |b| chunk_size(b, skip))? {
                        self.phase = if size == 0 { Phase::Trailer } else { Phase::Chunk(size) };
                    }
                }
                Phase::Trailer => {
                    let trailer = |b: &[u8]| match httparse::parse_headers(b, &mut [EMPTY_HEADER; 16]) {
                        Ok(Status::Complete((n, _))) => Ok(Some((n, ()))),
                        Ok(Status::Partial) => Ok(None),
                        Err(_) => Err(WireError("bad trailer")),
                    };
                    if self.framed(&mut input, trailer)?.is_some() {
                        self.phase = Phase::Head;
                        on(Item::End)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Runs `parse` on what `input` starts with, keeping it in `pending`
    /// until complete; consumes what was parsed (or all of `input`).
    fn framed<T>(
        &mut self,
        input: &mut &[u8],
        parse: impl Fn(&[u8]) -> Parsed<T>,
    ) -> Result<Option<T>, WireError> {
        let before = self.pending.len();
        if before == 0 {
            if let Some((n, t)) = parse(input)? {
                *input = &input[n..];
                return Ok(Some(t));
            }
        }
        let take = input.len().min(MAX_HEAD + 1 - before);
        self.pending.extend_from_slice(&input[..take]);
        match parse(&self.pending)? {
            Some((n, t)) => {
                *input = &input[n - before..];
                self.pending = Vec::new();
                Ok(Some(t))
            }
            None if self.pending.len() > MAX_HEAD => Err(WireError("response head too large")),
            None => {
                *input = &[];
                Ok(None)
            }
        }
    }
}

/// A chunk size line after `skip` bytes of CRLF; the size.
fn chunk_size(b: &[u8], skip: usize) -> Parsed<u64> {
    let (crlf, line) = b.split_at(b.len().min(skip));
    if !b"\r\n".starts_with(crlf) {
        return Err(WireError("chunk data not followed by CRLF"));
    }
    // httparse takes an empty line for size 0.
    match line.first() {
        None => return Ok(None),
        Some(d) if !d.is_ascii_hexdigit() => return Err(WireError("bad chunk size line")),
        Some(_) => {}
    }
    match httparse::parse_chunk_size(line) {
        Ok(Status::Complete((n, size))) => Ok(Some((skip + n, size))),
        Ok(Status::Partial) => Ok(None),
        Err(_) => Err(WireError("bad chunk size line")),
    }
}

/// The head and how its body is delimited (RFC 9112 §6.3; `Phase::Head`: none).
fn parse_head(bytes: &[u8]) -> Parsed<(Head, Phase)> {
    let mut headers = [EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut headers);
    let n = match response.parse(bytes) {
        Ok(Status::Complete(n)) => n,
        Ok(Status::Partial) => return Ok(None),
        Err(_) => return Err(WireError("bad response head")),
    };
    let status = response.code.unwrap_or_default();
    let mut head = Head { status, content_type: None, etag: None, close: false };
    let mut body = Phase::UntilClose;
    for h in response.headers.iter() {
        let text = || String::from_utf8_lossy(h.value).into_owned();
        match h.name.to_ascii_lowercase().as_str() {
            "content-type" => head.content_type = Some(text()),
            "etag" => head.etag = Some(text()),
            "connection" => head.close = h.value.eq_ignore_ascii_case(b"close"),
            "transfer-encoding" if h.value.trim_ascii().to_ascii_lowercase().ends_with(b"chunked") => {
                body = Phase::Size { skip: 0 }
            }
            "transfer-encoding" => return Err(WireError("unsupported transfer-encoding")),
            "content-length" if !matches!(body, Phase::Size { .. }) => {
                let len = std::str::from_utf8(h.value).ok().and_then(|v| v.parse().ok());
                body = Phase::Sized(len.ok_or(WireError("bad content-length"))?);
            }
            _ => {}
        }
    }
    if (100..200).contains(&status) || matches!((status, body), (204 | 304, _) | (_, Phase::Sized(0))) {
        body = Phase::Head;
    }
    Ok(Some((n, (head, body))))
}

/// The type of an SSE event, as far as the benchmark tells them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Kind {
    /// Unnamed (`message`): the media JSON.
    #[default]
    Message,
    Stale,
    Live,
    Presence,
    End,
    Other,
}

/// An event's own `id` field (the edge sends one with every data event).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Id {
    #[default]
    Missing,
    /// Not a decimal number.
    Bad,
    Value(u64),
}

/// What [`SseParser::feed`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SseItem {
    /// An event with data, and the `served_at_ms` stamp in its data if any.
    Event { kind: Kind, id: Id, stamp: Option<u64> },
    /// A `:` comment line (the edge's keep-alive).
    Comment,
}

/// Parses a `text/event-stream` body whose lines end with LF or CRLF (what
/// the edge and nchan send); an empty line dispatches an event with data.
#[derive(Debug, Default)]
pub struct SseParser {
    /// A line split across reads (empty otherwise).
    partial: Vec<u8>,
    kind: Kind,
    id: Id,
    data: bool,
    stamp: Option<u64>,
}

impl SseParser {
    pub fn feed(&mut self, mut input: &[u8], on: &mut impl FnMut(SseItem)) -> Result<(), WireError> {
        while let Some(end) = input.iter().position(|&b| b == b'\n') {
            if self.partial.is_empty() {
                self.line(&input[..end], on);
            } else {
                self.append(&input[..end])?;
                let line = std::mem::take(&mut self.partial);
                self.line(&line, on);
            }
            input = &input[end + 1..];
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
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let (field, value) = match line.iter().position(|&b| b == b':') {
            None if line.is_empty() => {
                let Self { kind, id, data, stamp, .. } = std::mem::take(self);
                if data {
                    on(SseItem::Event { kind, id, stamp });
                }
                return;
            }
            Some(0) => return on(SseItem::Comment),
            Some(i) => (&line[..i], line[i + 1..].strip_prefix(b" ").unwrap_or(&line[i + 1..])),
            None => (line, &b""[..]),
        };
        match field {
            b"data" => {
                self.data = true;
                self.stamp = self.stamp.or_else(|| find_stamp(value));
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
                    std::str::from_utf8(value).ok().and_then(|v| v.parse().ok()).map_or(Id::Bad, Id::Value)
            }
            _ => {}
        }
    }
}

/// The number after `"served_at_ms":` in a JSON text, if any.
fn find_stamp(json: &[u8]) -> Option<u64> {
    const KEY: &[u8] = b"\"served_at_ms\":";
    let at = json.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let digits = json[at..].trim_ascii_start();
    let len = digits.iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&digits[..len]).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `wire` in pieces of `step` bytes; the items as text.
    fn responses(wire: &[u8], step: usize) -> Result<Vec<String>, WireError> {
        let (mut p, mut out, mut body) = (ResponseParser::new(), Vec::new(), Vec::new());
        for piece in wire.chunks(step) {
            p.feed(piece, &mut |item| {
                match item {
                    Item::Head(h) => out.push(format!("head {} {:?} {}", h.status, h.etag, h.close)),
                    Item::Body(b) => body.extend_from_slice(b),
                    Item::End => {
                        out.push(format!("end {}", String::from_utf8_lossy(&std::mem::take(&mut body))))
                    }
                }
                Ok(())
            })?;
        }
        out.extend((!body.is_empty()).then(|| format!("open {}", String::from_utf8_lossy(&body))));
        Ok(out)
    }

    const CHUNKED: &[u8] = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";

    #[test]
    fn keep_alive_responses_with_chunks_split_across_reads() {
        let wire = [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nETag: \"e1\"\r\n\r\nhello"[..],
            b"HTTP/1.1 304 Not Modified\r\nETag: \"e1\"\r\n\r\n",
            CHUNKED,
            b"3;ext=1\r\nabc\r\nA\r\n0123456789\r\n0\r\nx-trailer: 1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nrest",
        ]
        .concat();
        let want = [
            "head 200 Some(\"\\\"e1\\\"\") false",
            "end hello",
            "head 304 Some(\"\\\"e1\\\"\") false",
            "end ",
            "head 200 None false",
            "end abc0123456789",
            "head 200 None true",
            "open rest",
        ];
        for step in 1..=wire.len() {
            assert_eq!(responses(&wire, step).unwrap(), want, "step {step}");
        }
    }

    #[test]
    fn framing_errors() {
        let bad: [&[u8]; 6] = [
            b"zz\r\n",
            b"\r\n",
            b"3\r\nabcX",
            b"FFFFFFFFFFFFFFFFF\r\n",
            b"3\r\nabc\r\n0\r\nbad trailer\r\n\r\n",
            b"1\r\na\n",
        ];
        for wire in bad {
            assert!(responses(&[CHUNKED, wire].concat(), 1).is_err(), "{}", String::from_utf8_lossy(wire));
        }
        for wire in [
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
            "SSH-2.0-OpenSSH\r\n\r\n",
        ] {
            assert!(responses(wire.as_bytes(), 1).is_err(), "{wire}");
        }
        let huge = [&b"HTTP/1.1 200 OK\r\nx: "[..], &[b'a'; MAX_HEAD]].concat();
        assert_eq!(responses(&huge, 1000), Err(WireError("response head too large")));
    }

    #[test]
    fn sse_events_with_lines_split_across_reads() {
        let body = b"retry: 3000\n\n:\n\nid: 7\ndata: {\"a\":1,\"served_at_ms\":1764064800123}\n\n\
            event: stale\r\ndata: {\"state\":\"stale\"}\r\n\r\nevent: presence\nid: x\ndata: 3\n\nevent: end\n\n";
        let want = [
            SseItem::Comment,
            SseItem::Event { kind: Kind::Message, id: Id::Value(7), stamp: Some(1_764_064_800_123) },
            SseItem::Event { kind: Kind::Stale, id: Id::Missing, stamp: None },
            SseItem::Event { kind: Kind::Presence, id: Id::Bad, stamp: None },
        ];
        for step in 1..=body.len() {
            let (mut p, mut got) = (SseParser::default(), Vec::new());
            for piece in body.chunks(step) {
                p.feed(piece, &mut |i| got.push(i)).unwrap();
            }
            assert_eq!(got, want, "step {step}");
            assert!(p.partial.is_empty() && p.partial.capacity() == 0, "nothing kept between events");
        }
        let mut p = SseParser::default();
        assert!(p.feed(&[b'a'; MAX_LINE + 1], &mut |_| {}).is_err());
    }
}
