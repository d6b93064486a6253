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
    /// A chunk size line, after this many bytes (the CRLF ending a chunk).
    Size(usize),
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
            let complete = match self.phase {
                Phase::Head => match self.framed(&mut input, parse_head)? {
                    Some((head, body)) => {
                        on(Item::Head(head))?;
                        self.phase = body;
                        matches!(body, Phase::Sized(0))
                    }
                    None => false,
                },
                Phase::Sized(left) | Phase::Chunk(left) => {
                    let n = input.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                    let (body, left) = (&input[..n], left - n as u64);
                    input = &input[n..];
                    self.phase = match self.phase {
                        Phase::Chunk(_) if left == 0 => Phase::Size(2),
                        Phase::Chunk(_) => Phase::Chunk(left),
                        _ => Phase::Sized(left),
                    };
                    on(Item::Body(body))?;
                    left == 0 && matches!(self.phase, Phase::Sized(_))
                }
                Phase::UntilClose => on(Item::Body(std::mem::take(&mut input))).map(|()| false)?,
                Phase::Size(skip) => {
                    if let Some(size) = self.framed(&mut input, |b| chunk_size(b, skip))? {
                        self.phase = if size == 0 { Phase::Trailer } else { Phase::Chunk(size) };
                    }
                    false
                }
                Phase::Trailer => {
                    let trailer = |b: &[u8]| {
                        let mut fields = [EMPTY_HEADER; 16];
                        Ok(done(httparse::parse_headers(b, &mut fields), "bad trailer")?
                            .map(|(n, _)| (n, ())))
                    };
                    self.framed(&mut input, trailer)?.is_some()
                }
            };
            if complete {
                self.phase = Phase::Head;
                on(Item::End)?;
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
        let parsed = parse(&self.pending)?;
        if parsed.is_none() && self.pending.len() > MAX_HEAD {
            return Err(WireError("response head too large"));
        }
        let rest: &[u8] = input;
        *input = parsed.as_ref().map_or(&[], |(n, _)| &rest[n - before..]);
        Ok(parsed.map(|(_, t)| {
            self.pending = Vec::new();
            t
        }))
    }
}

/// httparse's result: `None` if incomplete.
fn done<T, E>(r: Result<Status<T>, E>, what: &'static str) -> Result<Option<T>, WireError> {
    match r {
        Ok(Status::Complete(t)) => Ok(Some(t)),
        Ok(Status::Partial) => Ok(None),
        Err(_) => Err(WireError(what)),
    }
}

/// A chunk size line after `skip` bytes of CRLF; the size.
fn chunk_size(b: &[u8], skip: usize) -> Parsed<u64> {
    let (crlf, line) = b.split_at(b.len().min(skip));
    if !b"\r\n".starts_with(crlf) {
        return Err(WireError("chunk data not followed by CRLF"));
    }
    // httparse would take an empty line for size 0.
    if line.first().is_some_and(|d| !d.is_ascii_hexdigit()) {
        return Err(WireError("bad chunk size line"));
    }
    Ok(done(httparse::parse_chunk_size(line), "bad chunk size line")?.map(|(n, size)| (skip + n, size)))
}

/// The head and how its body is delimited (RFC 9112 §6.3; `Sized(0)`: none).
fn parse_head(bytes: &[u8]) -> Parsed<(Head, Phase)> {
    let mut headers = [EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut headers);
    let Some(n) = done(response.parse(bytes), "bad response head")? else { return Ok(None) };
    let status = response.code.unwrap_or_default();
    let mut head = Head { status, content_type: None, etag: None, close: false };
    let mut body = Phase::UntilClose;
    for h in response.headers.iter() {
        let text = || Some(String::from_utf8_lossy(h.value).into_owned());
        match h.name.to_ascii_lowercase().as_str() {
            "content-type" => head.content_type = text(),
            "etag" => head.etag = text(),
            "connection" => head.close = h.value.eq_ignore_ascii_case(b"close"),
            "transfer-encoding" if h.value.to_ascii_lowercase().trim_ascii_end().ends_with(b"chunked") => {
                body = Phase::Size(0)
            }
            "transfer-encoding" => return Err(WireError("unsupported transfer-encoding")),
            "content-length" if !matches!(body, Phase::Size(_)) => {
                let len = std::str::from_utf8(h.value).ok().and_then(|v| v.parse().ok());
                body = Phase::Sized(len.ok_or(WireError("bad content-length"))?);
            }
            _ => {}
        }
    }
    if (100..200).contains(&status) || status == 204 || status == 304 {
        body = Phase::Sized(0);
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

/// An SSE event with data (its `served_at_ms` stamp, if any), or a comment
/// (`None`: the edge's keep-alive).
pub type SseItem = Option<(Kind, Id, Option<u64>)>;

/// Parses a `text/event-stream` body whose lines end with LF or CRLF (as the
/// edge and nchan send); an empty line dispatches an event with data.
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
            Some(i) => (&line[..i], line[i + 1..].strip_prefix(b" ").unwrap_or(&line[i + 1..])),
            None => (line, &b""[..]),
        };
        match field {
            b"" if line.is_empty() => {
                let Self { kind, id, data, stamp, .. } = std::mem::take(self);
                if data {
                    on(Some((kind, id, stamp)));
                }
            }
            b"" => on(None),
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
    std::str::from_utf8(&digits[..digits.iter().take_while(|b| b.is_ascii_digit()).count()])
        .ok()?
        .parse()
        .ok()
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
                    Item::Head(h) => out.push(format!("{} {:?} {}", h.status, h.etag, h.close)),
                    Item::Body(b) => body.extend_from_slice(b),
                    Item::End => out.push(String::from_utf8(std::mem::take(&mut body)).unwrap()),
                }
                Ok(())
            })?;
        }
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
            b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n",
        ]
        .concat();
        let want = ["200 Some(\"\\\"e1\\\"\") false", "hello", "304 Some(\"\\\"e1\\\"\") false", ""]
            .into_iter()
            .chain(["200 None false", "abc0123456789", "200 None true"]);
        for step in 1..=wire.len() {
            assert_eq!(responses(&wire, step).unwrap(), want.clone().collect::<Vec<_>>(), "step {step}");
        }
    }

    #[test]
    fn framing_errors() {
        let chunks: [&[u8]; 6] = [
            b"zz\r\n",
            b"\r\n",
            b"FFFFFFFFFFFFFFFFF\r\n",
            b"3\r\nabcX",
            b"1\r\na\n",
            b"0\r\nbad trailer\r\n\r\n",
        ];
        for wire in chunks.map(|c| [CHUNKED, c].concat()).into_iter().chain([
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n".to_vec(),
            b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n".to_vec(),
            b"SSH-2.0-OpenSSH\r\n\r\n".to_vec(),
        ]) {
            assert!(responses(&wire, 1).is_err(), "{}", String::from_utf8_lossy(&wire));
        }
        let huge = [&b"HTTP/1.1 200 OK\r\nx: "[..], &[b'a'; MAX_HEAD]].concat();
        assert_eq!(responses(&huge, 1000), Err(WireError("response head too large")));
    }

    #[test]
    fn sse_events_with_lines_split_across_reads() {
        let body = b"retry: 3000\n\n:\n\nid: 7\ndata: {\"a\":1,\"served_at_ms\":1764064800123}\n\n\
            event: stale\r\ndata: {}\r\n\r\nevent: presence\nid: x\ndata: 3\n\nevent: end\n\n";
        let want = [
            None,
            Some((Kind::Message, Id::Value(7), Some(1_764_064_800_123))),
            Some((Kind::Stale, Id::Missing, None)),
            Some((Kind::Presence, Id::Bad, None)),
        ];
        for step in 1..=body.len() {
            let (mut p, mut got) = (SseParser::default(), Vec::new());
            body.chunks(step).for_each(|piece| p.feed(piece, &mut |i| got.push(i)).unwrap());
            assert_eq!((got.as_slice(), p.partial.capacity()), (&want[..], 0), "step {step}");
        }
        assert!(SseParser::default().feed(&[b'a'; MAX_LINE + 1], &mut |_| {}).is_err());
        assert_eq!(find_stamp(br#"{"served_at_ms": 99999999999999999999}"#), None);
    }
}
