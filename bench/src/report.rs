//! The output of a scenario: its figures are a `#[derive(Serialize)]` value,
//! written as JSON with `--json PATH` and printed by one generic printer:
//! nested objects become dotted `key  value` rows (units are in the keys),
//! and an array of objects (one per size, or per setup compared) is printed
//! side by side, one column per element, headed by its `column` field.
//! Floats are rounded to 3 decimals in both.

use anyhow::Context;
use serde::Serialize;
use serde_json::{Map, Value as Json};
use std::{collections::HashSet, io::Write, path::Path};

pub struct Report {
    doc: Map<String, Json>,
}

type Rows = Vec<(String, String)>;

impl Report {
    /// `figures` must serialize to an object; its fields follow `scenario`,
    /// `title` and `args` (filled by [`Report::flags`]) in the JSON.
    pub fn new(scenario: &str, title: String, figures: &impl Serialize) -> anyhow::Result<Self> {
        let mut figures = serde_json::to_value(figures).context("encoding the figures")?;
        round(&mut figures);
        let Json::Object(fields) = figures else { anyhow::bail!("figures are not an object: {figures}") };
        // `args` (see [`Report::flags`]) comes right after the title.
        let head = [("scenario", scenario.into()), ("title", title.into()), ("args", Json::Null)];
        let mut doc: Map<String, Json> = head.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        doc.extend(fields);
        doc.insert("notes".into(), Json::Array(Vec::new()));
        Ok(Self { doc })
    }

    /// Records the scenario's flags, as given or defaulted, in `args`: the command
    /// that reproduces the figures (a list flag's values joined by commas), in the
    /// order `command` declares them.
    pub fn flags(&mut self, command: &clap::Command, flags: &clap::ArgMatches) {
        let mut args = Map::new();
        for id in command.get_arguments().map(|a| a.get_id().as_str()) {
            let Ok(Some(values)) = flags.try_get_raw(id) else { continue };
            let values: Vec<_> = values.map(|v| v.to_string_lossy()).collect();
            args.insert(id.to_owned(), values.join(",").into());
        }
        self.doc.insert("args".into(), Json::Object(args));
    }

    /// A line printed under the table (and kept in the JSON), for what a
    /// reader must know to trust the figures.
    pub fn note(&mut self, note: String) -> &mut Self {
        if let Some(Json::Array(notes)) = self.doc.get_mut("notes") {
            notes.push(note.into());
        }
        self
    }

    pub fn print(&self, out: &mut impl Write) -> std::io::Result<()> {
        writeln!(out, "\n{}\n", self.doc["title"].as_str().unwrap_or_default())?;
        let mut plain = Rows::new();
        let figures = self.doc.iter().filter(|(k, _)| !["scenario", "title", "notes"].contains(&k.as_str()));
        for (key, value) in figures {
            match value {
                Json::Array(items) if !items.is_empty() && items.iter().all(Json::is_object) => {
                    table(out, "", &[std::mem::take(&mut plain)], &[])?;
                    let columns: Vec<Rows> = items.iter().map(|item| flatten("", item)).collect();
                    let heads =
                        columns.iter().enumerate().map(|(i, c)| cell(c, "column").unwrap_or(i.to_string()));
                    table(out, key, &columns, &heads.collect::<Vec<_>>())?;
                }
                _ => plain.extend(flatten(key, value)),
            }
        }
        table(out, "", &[plain], &[])?;
        for note in self.doc["notes"].as_array().into_iter().flatten() {
            writeln!(out, "note: {}", note.as_str().unwrap_or_default())?;
        }
        out.flush()
    }

    pub fn write_json(&self, path: &Path) -> anyhow::Result<()> {
        crate::stack::ensure_parent(path)?;
        let text = serde_json::to_string_pretty(&self.doc)? + "\n";
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
    }
}

/// `value` as `(dotted key, shown value)` rows.
fn flatten(key: &str, value: &Json) -> Rows {
    let join = |k: &str| if key.is_empty() { k.to_owned() } else { format!("{key}.{k}") };
    match value {
        Json::Object(fields) => fields.iter().flat_map(|(k, v)| flatten(&join(k), v)).collect(),
        Json::Array(items) if items.iter().any(|i| i.is_object() || i.is_array()) => {
            items.iter().enumerate().flat_map(|(i, v)| flatten(&format!("{key}[{i}]"), v)).collect()
        }
        Json::Array(items) => vec![(key.to_owned(), items.iter().map(shown).collect::<Vec<_>>().join(", "))],
        _ => vec![(key.to_owned(), shown(value))],
    }
}

fn shown(value: &Json) -> String {
    match value {
        Json::Null => "n/a".to_owned(),
        Json::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn cell(column: &Rows, key: &str) -> Option<String> {
    column.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone())
}

/// Columns of rows side by side under `heads` (a single column of rows
/// without heads is a plain `key  value` list), one line per key.
fn table(out: &mut impl Write, title: &str, columns: &[Rows], heads: &[String]) -> std::io::Result<()> {
    // Each key once, in the order first met.
    let mut seen = HashSet::new();
    let keys = columns.iter().flatten().map(|(k, _)| k.as_str()).filter(|&k| k != "column" && seen.insert(k));
    let mut lines: Vec<(&str, Vec<String>)> =
        keys.map(|k| (k, columns.iter().map(|c| cell(c, k).unwrap_or_default()).collect())).collect();
    if lines.is_empty() {
        return Ok(());
    }
    let width = lines.iter().map(|(k, _)| k.chars().count()).max().unwrap_or(0);
    let right = !heads.is_empty();
    if right {
        writeln!(out, "{title}")?;
        lines.insert(0, ("", heads.to_vec()));
    }
    let widths: Vec<usize> =
        (0..columns.len()).map(|i| lines.iter().map(|l| l.1[i].chars().count()).max().unwrap_or(0)).collect();
    for (label, cells) in lines {
        let cells =
            cells.iter().zip(&widths).map(|(c, &w)| if right { format!("{c:>w$}") } else { c.clone() });
        let line = format!("  {label:width$}  {}", cells.collect::<Vec<_>>().join("  "));
        writeln!(out, "{}", line.trim_end())?;
    }
    writeln!(out)
}

/// Rounds every float to 3 decimals (integers stay as they are).
fn round(value: &mut Json) {
    match value {
        Json::Number(n) if !(n.is_u64() || n.is_i64()) => {
            let x = n.as_f64().and_then(|x| serde_json::Number::from_f64((x * 1e3).round() / 1e3));
            *value = x.map_or(Json::Null, Json::Number);
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

/// Nearest-rank quantile `q` of `sorted` µs, in ms (`None` if empty).
pub fn quantile_ms(sorted: &[u64], q: f64) -> Option<f64> {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len().max(1));
    sorted.get(rank - 1).map(|&us| us as f64 / 1000.0)
}

/// Nearest-rank quantiles `qs` of `sorted` µs, in ms: one list-valued figure,
/// named for its quantiles (`..._p50_p99_max_ms`).
pub fn quantiles_ms(sorted: &[u64], qs: &[f64]) -> Vec<Option<f64>> {
    qs.iter().map(|&q| quantile_ms(sorted, q)).collect()
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
    use serde_json::json;

    #[test]
    fn nearest_rank_quantiles() {
        let xs = sorted([5_000, 1_000, 3_000, 2_000, 4_000]);
        assert_eq!(
            (quantile_ms(&xs, 0.5), quantile_ms(&xs, 0.99), quantile_ms(&[], 0.5)),
            (Some(3.0), Some(5.0), None)
        );
    }

    #[test]
    fn flags_record_given_and_default_values() {
        let cli = clap::Command::new("bench")
            .arg(clap::Arg::new("interval").long("interval").default_value("5s"))
            .arg(clap::Arg::new("sizes").long("sizes").value_delimiter(','))
            .arg(clap::Arg::new("seed").long("seed"));
        let matches = cli.clone().get_matches_from(["bench", "--sizes", "1000,5000"]);
        let mut r = Report::new("demo", "demo run".into(), &json!({"x": 1})).unwrap();
        r.flags(&cli, &matches);
        let keys: Vec<&String> = r.doc.keys().collect();
        assert_eq!(keys, ["scenario", "title", "args", "x", "notes"]);
        assert_eq!(r.doc["args"], json!({"interval": "5s", "sizes": "1000,5000"}));
    }

    #[test]
    fn prints_sections_and_columns_and_rounds() {
        let figures = json!({"events": 10, "upstream": {"rps": 1999.4567}, "runs": [
            {"column": "1000", "p99_ms": 3.25, "errors": 0},
            {"column": "15000", "p99_ms": null, "errors": 12}]});
        let mut r = Report::new("demo", "demo run".into(), &figures).unwrap();
        r.note("a note".into());
        let mut out = Vec::new();
        r.print(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("\nruns\n          1000  15000\n"), "{text}");
        assert!(text.contains("\n  p99_ms  3.25    n/a\n"), "{text}");
        assert!(text.contains("\n  errors     0     12\n"), "{text}");
        assert!(text.contains("  upstream.rps  1999.457\n"), "{text}");
        assert!(text.contains("note: a note"), "{text}");
        assert_eq!(
            (r.doc["upstream"]["rps"].as_f64(), &r.doc["runs"][1]["p99_ms"]),
            (Some(1999.457), &Json::Null)
        );
        assert_eq!((&r.doc["scenario"], &r.doc["notes"][0]), (&json!("demo"), &json!("a note")));
    }
}
