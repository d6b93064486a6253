//! The output of a scenario: its figures are a `#[derive(Serialize)]` value,
//! written as JSON with `--json PATH` and printed as a table by one generic
//! printer, so scenarios never lay out rows themselves.
//!
//! The printer flattens the JSON: nested objects become dotted keys, one
//! `key  value` row each (units are in the key: `_ms`, `_kib`, `_pct`, ...).
//! An array of objects (one per size of a run, or per setup compared) is
//! printed side by side, one column per element, headed by its `column`
//! field. Floats are rounded to 3 decimals in both.

use anyhow::Context;
use serde::Serialize;
use serde_json::{Map, Value as Json};
use std::{io::Write, path::Path};

pub struct Report {
    doc: Map<String, Json>,
}

impl Report {
    /// `figures` must serialize to an object; its fields follow `scenario`
    /// and `title` in the JSON.
    pub fn new(scenario: &str, title: String, figures: &impl Serialize) -> anyhow::Result<Self> {
        let mut doc = Map::new();
        doc.insert("scenario".into(), scenario.into());
        doc.insert("title".into(), title.into());
        match serde_json::to_value(figures).context("encoding the figures")? {
            Json::Object(fields) => doc.extend(fields),
            other => anyhow::bail!("figures are not an object: {other}"),
        }
        doc.insert("notes".into(), Json::Array(Vec::new()));
        let mut doc = Json::Object(doc);
        round(&mut doc);
        let Json::Object(doc) = doc else { unreachable!("built as an object") };
        Ok(Self { doc })
    }

    /// A line printed under the table (and kept in the JSON), for things a
    /// reader must know to trust the figures.
    pub fn note(&mut self, note: String) -> &mut Self {
        if let Some(Json::Array(notes)) = self.doc.get_mut("notes") {
            notes.push(note.into());
        }
        self
    }

    pub fn print(&self, out: &mut impl Write) -> std::io::Result<()> {
        writeln!(out, "\n{}\n", self.doc["title"].as_str().unwrap_or_default())?;
        let mut plain = Vec::new();
        for (key, value) in
            self.doc.iter().filter(|(k, _)| !matches!(k.as_str(), "scenario" | "title" | "notes"))
        {
            match value {
                Json::Array(items) if !items.is_empty() && items.iter().all(Json::is_object) => {
                    print_rows(out, &std::mem::take(&mut plain))?;
                    print_columns(out, key, items)?;
                }
                _ => flatten(key, value, &mut plain),
            }
        }
        print_rows(out, &plain)?;
        for note in self.doc["notes"].as_array().into_iter().flatten() {
            writeln!(out, "note: {}", note.as_str().unwrap_or_default())?;
        }
        out.flush()
    }

    pub fn write_json(&self, path: &Path) -> anyhow::Result<()> {
        let mut text = serde_json::to_string_pretty(&self.doc).context("encoding the figures")?;
        text.push('\n');
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
    }
}

/// `value` as `(dotted key, shown value)` rows.
fn flatten(key: &str, value: &Json, rows: &mut Vec<(String, String)>) {
    match value {
        Json::Object(fields) => {
            for (k, v) in fields {
                flatten(&if key.is_empty() { k.clone() } else { format!("{key}.{k}") }, v, rows);
            }
        }
        Json::Array(items) if items.iter().any(|i| i.is_object() || i.is_array()) => {
            for (i, v) in items.iter().enumerate() {
                flatten(&format!("{key}[{i}]"), v, rows);
            }
        }
        Json::Array(items) => {
            rows.push((key.to_owned(), items.iter().map(shown).collect::<Vec<_>>().join(", ")))
        }
        _ => rows.push((key.to_owned(), shown(value))),
    }
}

fn shown(value: &Json) -> String {
    match value {
        Json::Null => "n/a".to_owned(),
        Json::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn print_rows(out: &mut impl Write, rows: &[(String, String)]) -> std::io::Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let width = rows.iter().map(|(k, _)| k.chars().count()).max().unwrap_or(0);
    for (k, v) in rows {
        writeln!(out, "  {k:width$}  {v}")?;
    }
    writeln!(out)
}

/// Objects side by side: one row per key of any of them.
fn print_columns(out: &mut impl Write, title: &str, items: &[Json]) -> std::io::Result<()> {
    let flat: Vec<Vec<(String, String)>> = items
        .iter()
        .map(|item| {
            let mut rows = Vec::new();
            flatten("", item, &mut rows);
            rows
        })
        .collect();
    let mut keys: Vec<&str> = Vec::new();
    for (k, _) in flat.iter().flatten() {
        if k != "column" && !keys.contains(&k.as_str()) {
            keys.push(k);
        }
    }
    let cell = |col: &[(String, String)], key: &str| {
        col.iter().find(|(k, _)| k == key).map_or_else(String::new, |(_, v)| v.clone())
    };
    let heads: Vec<String> = flat
        .iter()
        .enumerate()
        .map(|(i, c)| Some(cell(c, "column")).filter(|h| !h.is_empty()).unwrap_or_else(|| i.to_string()))
        .collect();
    let width = keys.iter().map(|k| k.chars().count()).max().unwrap_or(0);
    let widths: Vec<usize> = flat
        .iter()
        .zip(&heads)
        .map(|(c, h)| {
            keys.iter().map(|k| cell(c, k).chars().count()).max().unwrap_or(0).max(h.chars().count())
        })
        .collect();
    let line = |label: &str, cells: Vec<String>| {
        let cells: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:>w$}")).collect();
        format!("  {label:width$}  {}", cells.join("  ")).trim_end().to_owned()
    };
    writeln!(out, "{title}")?;
    writeln!(out, "{}", line("", heads.clone()))?;
    for key in keys {
        writeln!(out, "{}", line(key, flat.iter().map(|c| cell(c, key)).collect()))?;
    }
    writeln!(out)
}

/// Rounds every float to 3 decimals (integers stay as they are).
fn round(value: &mut Json) {
    match value {
        Json::Number(n) if !(n.is_u64() || n.is_i64()) => {
            *value = n
                .as_f64()
                .and_then(|x| serde_json::Number::from_f64((x * 1e3).round() / 1e3))
                .map_or(Json::Null, Json::Number);
        }
        Json::Array(items) => items.iter_mut().for_each(round),
        Json::Object(fields) => fields.values_mut().for_each(round),
        _ => {}
    }
}

/// Bytes in MiB.
pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / 1_048_576.0
}

/// Serializes a duration as seconds (with `serialize_with`).
pub fn secs<S: serde::Serializer>(d: &std::time::Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// Nearest-rank quantile `q` of `sorted` µs, in ms (`None` if empty).
pub fn quantile_ms(sorted: &[u64], q: f64) -> Option<f64> {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len().max(1));
    sorted.get(rank - 1).map(|&us| us as f64 / 1000.0)
}

/// `xs` sorted.
pub fn sorted<T: Ord>(xs: impl IntoIterator<Item = T>) -> Vec<T> {
    let mut v: Vec<T> = xs.into_iter().collect();
    v.sort_unstable();
    v
}

pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    struct Run {
        column: &'static str,
        p99_ms: Option<f64>,
        errors: u64,
    }

    #[derive(Serialize)]
    struct Figures {
        events: u32,
        upstream: Upstream,
        runs: Vec<Run>,
    }

    #[derive(Serialize)]
    struct Upstream {
        rps: f64,
    }

    #[test]
    fn nearest_rank_quantiles() {
        let xs = sorted([5_000, 1_000, 3_000, 2_000, 4_000]);
        assert_eq!(quantile_ms(&xs, 0.5), Some(3.0));
        assert_eq!(quantile_ms(&xs, 0.99), Some(5.0));
        assert_eq!(quantile_ms(&[], 0.5), None);
    }

    #[test]
    fn prints_sections_and_columns_and_rounds() {
        let figures = Figures {
            events: 10,
            upstream: Upstream { rps: 1999.4567 },
            runs: vec![
                Run { column: "1000", p99_ms: Some(3.25), errors: 0 },
                Run { column: "15000", p99_ms: None, errors: 12 },
            ],
        };
        let mut r = Report::new("demo", "demo run".into(), &figures).unwrap();
        r.note("a note".into());
        let mut out = Vec::new();
        r.print(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("\n          1000  15000\n"), "{text}");
        assert!(text.contains("\n  p99_ms  3.25    n/a\n"), "{text}");
        assert!(text.contains("\n  errors     0     12\n"), "{text}");
        assert!(text.contains("  upstream.rps  1999.457\n"), "{text}");
        assert!(text.contains("note: a note"), "{text}");
        let j = &r.doc;
        assert_eq!(j["upstream"]["rps"].as_f64(), Some(1999.457));
        assert_eq!(j["runs"][1]["p99_ms"], Json::Null);
        assert_eq!(j["scenario"], "demo");
        assert_eq!(j["notes"][0], "a note");
    }
}
