//! The push parser of what a browser reads (BENCHMARKS.md, "The SSE load
//! generator"): one HTTP/1.1 response, a 200 `text/event-stream` head
//! (httparse) then a chunked (edge) or until-close (nchan) body, and its SSE
//! lines. Fed whatever one `read` returned, it keeps only a head or line split
//! across reads. Framing is checked strictly; of the payload only the event
//! type, id and `served_at_ms` stamp are read.

use httparse::{EMPTY_HEADER, Status};
use std::mem::take;

/// Largest response head or SSE line accepted.
const MAX_LINE: usize = 64 * 1024;

/// The type of an SSE event, as far as the benchmark tells them apart
/// (`Message`: unnamed, the media JSON).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Kind {
    #[default]
    Message,
    Stale,
    Live,
    Presence,
    End,
    Other,
}

/// An event's own `id` field (`Bad`: not a decimal number).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Id {
    #[default]
    Missing,
    Bad,
    Value(u64),
}

/// What [`Parser::feed`] reports: the 200 head, a comment line (the edge's
/// keep-alive), an event with data (and its `served_at_ms` stamp).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Item {
    Open,
    Comment,
    Event(Kind, Id, Option<u64>),
}

#[derive(Debug, Clone, Copy, Default)]
enum Phase {
    #[default]
    Head,
    /// Between two chunks' data: the size read so far, and where: in the
    /// CRLF after the data (0, 1), at the size's first digit (2), in its other
    /// digits (3), past them (an extension, the CR: 4) until the LF.
    Size(u64, u8),
    /// Bytes left of a chunk's data.
    Chunk(u64),
    UntilClose,
}

/// One connection's response; its body is `text/event-stream` lines ending
/// with LF or CRLF, an empty line dispatching an event with data.
#[derive(Debug, Default)]
pub struct Parser {
    phase: Phase,
    /// A head or SSE line split across reads (empty otherwise).
    partial: Vec<u8>,
    /// The event being read.
    kind: Kind,
    id: Id,
    stamp: Option<u64>,
    data: bool,
}

impl Parser {
    /// Feeds bytes as they arrive; an error (why) ends the connection, as do
    /// a non-200 head and the last chunk.
    pub fn feed(&mut self, mut input: &[u8], on: &mut impl FnMut(Item)) -> Result<(), String> {
        while let Some(&b) = input.first() {
            self.phase = match self.phase {
                Phase::Head => self.head(&mut input)?.inspect(|_| on(Item::Open)).unwrap_or(Phase::Head),
                Phase::Size(size, at) => {
                    input = &input[1..];
                    match (at, b, char::from(b).to_digit(16)) {
                        (0, b'\r', _) | (1, b'\n', _) => Phase::Size(0, at + 1),
                        (0 | 1, ..) => return Err("parse: chunk data not followed by CRLF".into()),
                        // A digit more, unless the size would overflow.
                        (2 | 3, _, Some(d)) if size >> 60 == 0 => Phase::Size((size << 4) | u64::from(d), 3),
                        (3 | 4, b'\n', _) if size == 0 => return Err("closed by the server".into()),
                        (3 | 4, b'\n', _) => Phase::Chunk(size),
                        (3, b';' | b'\r', _) | (4, ..) => Phase::Size(size, 4),
                        _ => return Err("parse: bad chunk size line".into()),
                    }
                }
                Phase::Chunk(left) => {
                    let n = input.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                    self.lines(&input[..n], on)?;
                    input = &input[n..];
                    if n as u64 == left { Phase::Size(0, 0) } else { Phase::Chunk(left - n as u64) }
                }
                Phase::UntilClose => return self.lines(input, on),
            }
        }
        Ok(())
    }

    /// The body's framing once the head is complete (consumed); until then
    /// `input` goes to `partial`.
    fn head(&mut self, input: &mut &[u8]) -> Result<Option<Phase>, String> {
        let before = self.partial.len();
        if before == 0 {
            if let Some((n, body)) = parse_head(input)? {
                *input = &input[n..];
                return Ok(Some(body));
            }
        }
        let take = input.len().min(MAX_LINE + 1 - before);
        self.partial.extend_from_slice(&input[..take]);
        let Some((n, body)) = parse_head(&self.partial)? else {
            *input = &[];
            let fits = self.partial.len() <= MAX_LINE;
            return if fits { Ok(None) } else { Err("parse: response head too large".into()) };
        };
        (*input, self.partial) = (&input[n - before..], Vec::new());
        Ok(Some(body))
    }
}

/// How the body of a 200 `text/event-stream` head is delimited, after its
/// length; anything else is an error.
fn parse_head(bytes: &[u8]) -> Result<Option<(usize, Phase)>, String> {
    let mut headers = [EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut headers);
    let parsed = response.parse(bytes).map_err(|_| "parse: bad response head".to_owned())?;
    let Status::Complete(n) = parsed else { return Ok(None) };
    if response.code != Some(200) {
        return Err(format!("status {}", response.code.unwrap_or_default()));
    }
    let values = |name: &'static str| {
        response.headers.iter().filter(move |h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value)
    };
    // Every transfer-encoding ends with chunked; the last content-type is SSE.
    let chunked = |v: &[u8]| v.to_ascii_lowercase().trim_ascii_end().ends_with(b"chunked");
    if !values("transfer-encoding").all(chunked) {
        return Err("parse: unsupported transfer-encoding".into());
    }
    if !values("content-type").next_back().is_some_and(|v| v.starts_with(b"text/event-stream")) {
        return Err("200 without content-type text/event-stream".into());
    }
    let body =
        if values("transfer-encoding").next().is_some() { Phase::Size(0, 2) } else { Phase::UntilClose };
    Ok(Some((n, body)))
}

impl Parser {
    fn lines(&mut self, mut input: &[u8], on: &mut impl FnMut(Item)) -> Result<(), String> {
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
            return Err("parse: SSE line too long".into());
        }
        self.partial.extend_from_slice(bytes);
        Ok(())
    }

    fn line(&mut self, line: &[u8], on: &mut impl FnMut(Item)) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let mut parts = line.splitn(2, |&b| b == b':');
        let (field, value) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
        let value = value.strip_prefix(b" ").unwrap_or(value);
        match field {
            b"" if line.is_empty() => {
                let (kind, id, stamp) = (take(&mut self.kind), take(&mut self.id), self.stamp.take());
                if take(&mut self.data) {
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
            b"id" => self.id = decimal(value).map_or(Id::Bad, Id::Value),
            _ => {}
        }
    }
}

/// The number after `"served_at_ms":` in a JSON text, if any.
fn find_stamp(json: &[u8]) -> Option<u64> {
    const KEY: &[u8] = b"\"served_at_ms\":";
    let at = json.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let digits = json[at..].trim_ascii_start();
    decimal(&digits[..digits.iter().take_while(|b| b.is_ascii_digit()).count()])
}

/// `bytes` as a decimal number (`str::parse`).
fn decimal(bytes: &[u8]) -> Option<u64> {
    std::str::from_utf8(bytes).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `wire` in pieces of `step` bytes: the items, and the error.
    fn parse(wire: &str, step: usize) -> (Vec<Item>, String) {
        let (mut p, mut items) = (Parser::default(), Vec::new());
        let end = wire.as_bytes().chunks(step).try_for_each(|piece| p.feed(piece, &mut |i| items.push(i)));
        (items, end.err().unwrap_or_default())
    }

    #[test]
    fn responses_split_at_every_point() {
        let body = "retry: 3000\n\n:\n\nid: 7\ndata: {\"a\":1,\"served_at_ms\":1764064800123}\n\n\
            event: stale\r\ndata: {}\r\n\r\nevent: presence\nid: x\ndata: 3\n\nevent: end\n\n";
        let (stale, presence) =
            (Item::Event(Kind::Stale, Id::Missing, None), Item::Event(Kind::Presence, Id::Bad, None));
        let data = Item::Event(Kind::Message, Id::Value(7), Some(1_764_064_800_123));
        let want = vec![Item::Open, Item::Comment, data, stale, presence];
        let head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n";
        let chunk = |c: &[u8]| format!("{:x};e=1\r\n{}\r\n", c.len(), String::from_utf8_lossy(c));
        let chunks: String = body.as_bytes().chunks(7).map(chunk).collect();
        let chunked = format!("{head}Transfer-Encoding: chunked\r\n\r\n{chunks}0\r\n\r\n");
        for step in 1..=chunked.len() {
            assert_eq!(parse(&format!("{head}\r\n{body}"), step), (want.clone(), String::new()), "{step}");
            assert_eq!(parse(&chunked, step), (want.clone(), "closed by the server".into()), "{step}");
        }
    }

    #[test]
    fn errors() {
        let sse = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n";
        let chunked = format!("{sse}transfer-encoding: chunked\r\n\r\n");
        for (wire, want) in [
            ("HTTP/1.1 503 Busy\r\ncontent-length: 0\r\n\r\n".into(), "status 503"),
            ("HTTP/1.1 200 OK\r\n\r\n".into(), "200 without content-type text/event-stream"),
            ("SSH-2.0-OpenSSH\r\n\r\n".into(), "parse: bad response head"),
            (format!("{sse}transfer-encoding: gzip\r\n\r\n"), "parse: unsupported transfer-encoding"),
            (format!("{chunked}zz\r\n"), "parse: bad chunk size line"),
            (format!("{chunked}\r\n"), "parse: bad chunk size line"),
            (format!("{chunked}FFFFFFFFFFFFFFFFF\r\n"), "parse: bad chunk size line"),
            (format!("{chunked}3\r\nabcX"), "parse: chunk data not followed by CRLF"),
            (format!("{sse}x: {}", "a".repeat(MAX_LINE)), "parse: response head too large"),
            (format!("{sse}\r\n{}", "a".repeat(MAX_LINE + 1)), "parse: SSE line too long"),
        ] {
            assert_eq!(parse(&wire, 1000).1, want);
        }
        assert_eq!(find_stamp(br#"{"served_at_ms": 99999999999999999999}"#), None);
    }
}
