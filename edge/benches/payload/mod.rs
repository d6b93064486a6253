//! Media documents shaped like the ones a live event serves, shared by the
//! edge's micro-benchmarks: a small one (a score line, 187 bytes) and a
//! large one (a timeline of incidents, 16.2 KiB) as the poller hands them on
//! (one line), and a large one pretty-printed (16.1 KiB in 875 lines, the
//! encoder's worst case: every line gets its own `data:` prefix).

/// 187 bytes, one line: what most updates of a match look like.
pub fn small() -> String {
    concat!(
        r#"{"event_id":"match-4821","state":"live","minute":67,"#,
        r#""score":{"home":2,"away":1},"last":{"type":"goal","player":"J. Alvarez","#,
        r#""team":"home","minute":66},"updated_at":"2026-11-30T12:41:07Z"}"#
    )
    .to_owned()
}

/// 16.2 KiB: the same document with 165 incidents of its timeline, one line.
pub fn large() -> String {
    timeline(165)
}

fn timeline(incidents: usize) -> String {
    let incidents: Vec<String> = (0..incidents).map(|i| incident(i, incidents)).collect();
    format!(
        r#"{{"event_id":"match-4821","state":"live","minute":67,"score":{{"home":2,"away":1}},"incidents":[{}]}}"#,
        incidents.join(",")
    )
}

/// The timeline pretty-printed (two-space indents, one field per line),
/// with 108 incidents for about the size of [`large`].
pub fn large_multiline() -> String {
    let mut out = String::with_capacity(20 << 10);
    let mut depth = 0usize;
    let mut in_string = false;
    for c in timeline(108).chars() {
        match c {
            '"' => {
                in_string = !in_string;
                out.push(c);
            }
            '{' | '[' if !in_string => {
                depth += 1;
                out.push(c);
                newline(&mut out, depth);
            }
            '}' | ']' if !in_string => {
                depth -= 1;
                newline(&mut out, depth);
                out.push(c);
            }
            ',' if !in_string => {
                out.push(c);
                newline(&mut out, depth);
            }
            _ => out.push(c),
        }
    }
    out
}

fn newline(out: &mut String, depth: usize) {
    out.push('\n');
    out.extend(std::iter::repeat_n("  ", depth));
}

fn incident(i: usize, of: usize) -> String {
    let kind = ["shot", "foul", "corner", "substitution", "card"][i % 5];
    let team = if i % 2 == 0 { "home" } else { "away" };
    format!(
        r#"{{"id":{},"minute":{},"type":"{kind}","team":"{team}","player":"Player {}","detail":"incident {i}"}}"#,
        100_000 + i,
        i * 67 / of,
        i % 22
    )
}
