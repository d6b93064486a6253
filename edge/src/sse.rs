//! The `text/event-stream` encoder (WHATWG HTML, "Server-sent events").
//!
//! Written by hand rather than with `axum::response::sse::Event`, which splits
//! CRLF into two line breaks and panics on CR/LF in ids: here any text is
//! encoded so that a conforming parser gets back exactly the same data, with
//! every kind of line break (CRLF, CR, LF) read as one LF. Frames are built
//! once per update into `Bytes` and shared by every connection.

use bytes::{BufMut, Bytes, BytesMut};

/// One event to encode. `id` and `event` are single-line fields: CR, LF and
/// NUL are removed from them (a browser ignores an id holding NUL and a line
/// break would end the field early).
#[derive(Debug, Default, Clone, Copy)]
pub struct Event<'a> {
    pub id: Option<&'a str>,
    pub event: Option<&'a str>,
    pub data: &'a str,
}

impl Event<'_> {
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(self.data.len() + 48);
        if let Some(id) = self.id {
            put_field(&mut out, "id", id);
        }
        if let Some(event) = self.event {
            put_field(&mut out, "event", event);
        }
        for line in lines(self.data) {
            out.put_slice(b"data: ");
            out.put_slice(line.as_bytes());
            out.put_u8(b'\n');
        }
        out.put_u8(b'\n');
        out.freeze()
    }
}

fn put_field(out: &mut BytesMut, name: &str, value: &str) {
    out.put_slice(name.as_bytes());
    out.put_slice(b": ");
    for c in value.chars().filter(|c| !matches!(c, '\r' | '\n' | '\0')) {
        let mut buf = [0; 4];
        out.put_slice(c.encode_utf8(&mut buf).as_bytes());
    }
    out.put_u8(b'\n');
}

/// Splits on CRLF, lone CR and lone LF, as an SSE parser does. The search
/// is `memchr2`'s (SIMD), not `str::find` over a char set, which looks at
/// one char at a time: most of a large document's encoding time was this
/// scan. Both bytes are ASCII, so every split falls on a char boundary.
fn lines(data: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(data);
    std::iter::from_fn(move || {
        let s = rest?;
        match memchr::memchr2(b'\r', b'\n', s.as_bytes()) {
            None => {
                rest = None;
                Some(s)
            }
            Some(i) => {
                let skip = if s[i..].starts_with("\r\n") { 2 } else { 1 };
                rest = Some(&s[i + skip..]);
                Some(&s[..i])
            }
        }
    })
}

/// `retry: <ms>`: how long a browser waits before reconnecting.
pub fn retry(ms: u64) -> Bytes {
    Bytes::from(format!("retry: {ms}\n\n"))
}

/// A comment line: ignored by parsers, keeps proxies and NAT tables from
/// closing an idle stream and lets a dead peer be noticed on write.
pub const KEEPALIVE: Bytes = Bytes::from_static(b":\n\n");

#[cfg(test)]
mod tests {
    use super::*;
    use eventsource_stream::Eventsource;
    use futures_util::StreamExt;

    /// Parses `wire` with an independent SSE implementation.
    fn parse(wire: Bytes) -> Vec<eventsource_stream::Event> {
        let stream = futures_util::stream::iter([Ok::<_, std::convert::Infallible>(wire)]);
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let events: Vec<_> = rt.block_on(stream.eventsource().collect());
        events.into_iter().map(|e| e.expect("parses")).collect()
    }

    fn normalise(s: &str) -> String {
        s.replace("\r\n", "\n").replace('\r', "\n")
    }

    const HOSTILE: &[&str] = &[
        "plain",
        "a\nb",
        "a\r\nb",
        "a\rb",
        "a\n\nb",
        "a\r\r\nb\n\rc",
        "trailing\n",
        "trailing\r\n",
        "\nleading",
        "data: injected\n\nevent: end",
        "id: 9\nretry: 1",
        ": comment\n",
        "nul\0inside",
        "unicode é ✓ \u{2028} \u{feff}",
        " leading space",
    ];

    #[test]
    fn hostile_data_round_trips_through_an_independent_parser() {
        for data in HOSTILE {
            let wire = Event { id: Some("7"), event: None, data }.encode();
            assert!(!wire.contains(&b'\r'), "CR on the wire for {data:?}");
            let events = parse(wire);
            assert_eq!(events.len(), 1, "{data:?}");
            assert_eq!(events[0].data, normalise(data), "{data:?}");
            assert_eq!(events[0].id, "7");
            assert_eq!(events[0].event, "message");
        }
    }

    #[test]
    fn id_and_event_never_carry_line_breaks_or_nul() {
        for hostile in HOSTILE {
            let wire = Event { id: Some(hostile), event: Some(hostile), data: "x" }.encode();
            let text = std::str::from_utf8(&wire).unwrap();
            let id_line = text.lines().find(|l| l.starts_with("id: ")).unwrap();
            assert!(!id_line.contains('\0'));
            let events = parse(wire.clone());
            assert_eq!(events.len(), 1, "{hostile:?}: {text:?}");
            assert_eq!(events[0].data, "x");
        }
    }

    #[test]
    fn named_events_and_retry() {
        let mut wire = BytesMut::new();
        wire.extend_from_slice(&retry(3000));
        wire.extend_from_slice(&KEEPALIVE);
        wire.extend_from_slice(&Event { id: None, event: Some("end"), data: "{}" }.encode());
        let events = parse(wire.freeze());
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].event, "end");
        // A browser applies `retry:` on its own; this parser only reports it
        // on an event of the same block, so check the bytes.
        assert_eq!(&retry(3000)[..], b"retry: 3000\n\n");
    }
}
