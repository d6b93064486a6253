//! The push parser of what a browser reads: one HTTP/1.1 response, a 200
//! `text/event-stream` head then a chunked (edge) or until-close (nchan)
//! body, and its SSE lines. Fed whatever one `read` returned, it keeps only a
//! line split across reads (BENCHMARKS.md, "The SSE load generator").
//! Framing is checked strictly (httparse for the head and chunk sizes); of
//! the payload only the event type, id and `served_at_ms` stamp are read.

use httparse::{EMPTY_HEADER, Status};

/// Largest response head, chunk size line or SSE line accepted.
const MAX_LINE: usize = 64 * 1024;

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

/// What [`Parser::feed`] reports, in wire order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Item {
    /// The 200 `text/event-stream` head.
    Open,
    /// A comment line (the edge's keep-alive).
    Comment,
    /// An event with data, and its `served_at_ms` stamp if any.
    Event(Kind, Id, Option<u64>),
}

#[derive(Debug, Clone, Copy, Default)]
enum Phase {
    #[default]
    Head,
    /// A chunk size line, after this many bytes (the CRLF ending a chunk).
    Size(usize),
    /// Bytes left of a chunk's data.
    Chunk(u64),
    UntilClose,
}

/// One connection's response.
#[derive(Debug, Default)]
pub struct Parser {
    phase: Phase,
    /// A head or chunk size line split across reads (empty otherwise).
    pending: Vec<u8>,
    sse: Sse,
}

type Parsed<T> = Result<Option<(usize, T)>, String>;

fn bad(what: &str) -> String {
    format!("parse: {what}")
}

impl Parser {
    /// Feeds bytes as they arrive; an error (why) ends the connection, as
    /// does a non-200 head and the last chunk.
    pub fn feed(&mut self, mut input: &[u8], on: &mut impl FnMut(Item)) -> Result<(), String> {
        while !input.is_empty() {
            match self.phase {
                Phase::Head => {
                    if let Some(body) = self.framed(&mut input, parse_head)? {
                        self.phase = body;
                        on(Item::Open);
                    }
                }
                Phase::Size(skip) => match self.framed(&mut input, |b| chunk_size(b, skip))? {
                    Some(0) => return Err("closed by the server".into()),
                    Some(size) => self.phase = Phase::Chunk(size),
                    None => {}
                },
                Phase::Chunk(left) => {
                    let n = input.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                    let left = left - n as u64;
                    self.phase = if left == 0 { Phase::Size(2) } else { Phase::Chunk(left) };
                    self.sse.feed(&input[..n], on)?;
                    input = &input[n..];
                }
                Phase::UntilClose => return self.sse.feed(input, on),
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
    ) -> Result<Option<T>, String> {
        let before = self.pending.len();
        if before == 0 {
            if let Some((n, t)) = parse(input)? {
                *input = &input[n..];
                return Ok(Some(t));
            }
        }
        let take = input.len().min(MAX_LINE + 1 - before);
        self.pending.extend_from_slice(&input[..take]);
        let parsed = parse(&self.pending)?;
        if parsed.is_none() && self.pending.len() > MAX_LINE {
            return Err(bad("response head too large"));
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
fn done<T, E>(r: Result<Status<T>, E>, what: &str) -> Result<Option<T>, String> {
    match r {
        Ok(Status::Complete(t)) => Ok(Some(t)),
        Ok(Status::Partial) => Ok(None),
        Err(_) => Err(bad(what)),
    }
}

/// A chunk size line after `skip` bytes of CRLF; the size.
fn chunk_size(b: &[u8], skip: usize) -> Parsed<u64> {
    let (crlf, line) = b.split_at(b.len().min(skip));
    if !b"\r\n".starts_with(crlf) {
        return Err(bad("chunk data not followed by CRLF"));
    }
    // httparse would take an empty line for size 0.
    if line.first().is_some_and(|d| !d.is_ascii_hexdigit()) {
        return Err(bad("bad chunk size line"));
    }
    Ok(done(httparse::parse_chunk_size(line), "bad chunk size line")?.map(|(n, size)| (skip + n, size)))
}

/// How the body of a 200 `text/event-stream` head is delimited.
fn parse_head(bytes: &[u8]) -> Parsed<Phase> {
    let mut headers = [EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut headers);
    let Some(n) = done(response.parse(bytes), "bad response head")? else { return Ok(None) };
    match response.code {
        Some(200) => {}
        status => return Err(format!("status {}", status.unwrap_or_default())),
    }
    let (mut sse, mut body) = (false, Phase::UntilClose);
    for h in response.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-type") {
            sse = h.value.starts_with(b"text/event-stream");
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            if !h.value.to_ascii_lowercase().trim_ascii_end().ends_with(b"chunked") {
                return Err(bad("unsupported transfer-encoding"));
            }
            body = Phase::Size(0);
        }
    }
    if !sse {
        return Err("200 without content-type text/event-stream".into());
    }
    Ok(Some((n, body)))
}

/// A `text/event-stream` body whose lines end with LF or CRLF (as the edge
/// and nchan send); an empty line dispatches an event with data.
#[derive(Debug, Default)]
struct Sse {
    /// A line split across reads (empty otherwise).
    partial: Vec<u8>,
    kind: Kind,
    id: Id,
    data: bool,
    stamp: Option<u64>,
}

impl Sse {
    fn feed(&mut self, mut input: &[u8], on: &mut impl FnMut(Item)) -> Result<(), String> {
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

    fn append(&mut self, bytes: &[u8]) -> Result<(), String> {
        if self.partial.len() + bytes.len() > MAX_LINE {
            return Err(bad("SSE line too long"));
        }
        self.partial.extend_from_slice(bytes);
        Ok(())
    }

    fn line(&mut self, line: &[u8], on: &mut impl FnMut(Item)) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(i) => (&line[..i], line[i + 1..].strip_prefix(b" ").unwrap_or(&line[i + 1..])),
            None => (line, &b""[..]),
        };
        match field {
            b"" if line.is_empty() => {
                let Self { kind, id, data, stamp, .. } = std::mem::take(self);
                if data {
                    on(Item::Event(kind, id, stamp));
                }
            }
            b"" => on(Item::Comment),
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

    /// Feeds `wire` in pieces of `step` bytes: the items, and the error.
    fn parse(wire: &[u8], step: usize) -> (Vec<Item>, String) {
        let (mut p, mut items) = (Parser::default(), Vec::new());
        let end = wire.chunks(step).try_for_each(|piece| p.feed(piece, &mut |i| items.push(i)));
        assert!(p.sse.partial.is_empty() || end.is_err());
        (items, end.err().unwrap_or_default())
    }

    #[test]
    fn responses_split_at_every_point() {
        let body = "retry: 3000\n\n:\n\nid: 7\ndata: {\"a\":1,\"served_at_ms\":1764064800123}\n\n\
            event: stale\r\ndata: {}\r\n\r\nevent: presence\nid: x\ndata: 3\n\nevent: end\n\n";
        let want = [
            Item::Open,
            Item::Comment,
            Item::Event(Kind::Message, Id::Value(7), Some(1_764_064_800_123)),
            Item::Event(Kind::Stale, Id::Missing, None),
            Item::Event(Kind::Presence, Id::Bad, None),
        ];
        let head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream";
        let until_close = format!("{head}\r\n\r\n{body}");
        let chunks: String = body
            .as_bytes()
            .chunks(7)
            .map(|c| format!("{:x};e=1\r\n{}\r\n", c.len(), String::from_utf8_lossy(c)))
            .collect();
        let chunked = format!("{head}\r\nTransfer-Encoding: chunked\r\n\r\n{chunks}0\r\n\r\n");
        for step in 1..=chunked.len() {
            assert_eq!(parse(until_close.as_bytes(), step), (want.to_vec(), String::new()), "step {step}");
            let closed = (want.to_vec(), "closed by the server".to_owned());
            assert_eq!(parse(chunked.as_bytes(), step), closed, "step {step}");
        }
    }

    #[test]
    fn errors() {
        let sse = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n";
        let chunked = format!("{sse}transfer-encoding: chunked\r\n\r\n");
        for (wire, want) in [
            ("HTTP/1.1 503 Busy\r\ncontent-length: 0\r\n\r\n".into(), "status 503"),
            (
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\n".into(),
                "200 without content-type text/event-stream",
            ),
            ("SSH-2.0-OpenSSH\r\n\r\n".into(), "parse: bad response head"),
            (format!("{sse}transfer-encoding: gzip\r\n\r\n"), "parse: unsupported transfer-encoding"),
            (format!("{chunked}zz\r\n"), "parse: bad chunk size line"),
            (format!("{chunked}\r\n"), "parse: bad chunk size line"),
            (format!("{chunked}FFFFFFFFFFFFFFFFF\r\n"), "parse: bad chunk size line"),
            (format!("{chunked}3\r\nabcX"), "parse: chunk data not followed by CRLF"),
            (format!("{sse}x: {}", "a".repeat(MAX_LINE)), "parse: response head too large"),
            (format!("{sse}\r\n{}", "a".repeat(MAX_LINE + 1)), "parse: SSE line too long"),
        ] {
            assert_eq!(parse(wire.as_bytes(), 1000).1, want);
        }
        assert_eq!(find_stamp(br#"{"served_at_ms": 99999999999999999999}"#), None);
    }
}
