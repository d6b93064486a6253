//! The output of a scenario: a table for people and, with `--json PATH`, the
//! same figures as JSON for scripts comparing runs. Scenarios only add rows;
//! layout and number formatting live here so every scenario reads alike.
//!
//! A report may have columns (one per size of a run, or one per setup being
//! compared): rows added with [`Report::row_each`] carry one value per column,
//! so the sizes sit side by side; plain rows (parameters shared by all
//! columns) carry one value. In the JSON a per-column row is an array in
//! column order and `columns` names the columns.

use anyhow::Context;
use serde_json::{Map, Value as Json};
use std::{borrow::Cow, io::Write, path::Path};

/// A row label or section title: usually a literal, sometimes composed (a
/// label naming the server measured).
pub type Label = Cow<'static, str>;

/// A figure's value and how it is shown.
#[derive(Debug, Clone)]
pub enum Value {
    Int(u64),
    /// A number shown with this many decimals.
    Float(f64, usize),
    Text(String),
    /// No figure (nothing measured); `n/a` in the table, `null` in JSON.
    Missing,
}

impl Value {
    fn shown(&self) -> String {
        match self {
            Self::Int(n) => n.to_string(),
            Self::Float(x, decimals) => format!("{x:.decimals$}"),
            Self::Text(s) => s.clone(),
            Self::Missing => "n/a".to_owned(),
        }
    }

    fn json(&self) -> Json {
        match self {
            Self::Int(n) => Json::from(*n),
            // Rounded like the table; JSON has no NaN or infinity.
            Self::Float(x, decimals) => {
                let scale = 10f64.powi(i32::try_from(*decimals).unwrap_or(6));
                serde_json::Number::from_f64((x * scale).round() / scale).map_or(Json::Null, Json::Number)
            }
            Self::Text(s) => Json::from(s.as_str()),
            Self::Missing => Json::Null,
        }
    }
}

impl From<u64> for Value {
    fn from(n: u64) -> Self {
        Self::Int(n)
    }
}

impl From<u32> for Value {
    fn from(n: u32) -> Self {
        Self::Int(n.into())
    }
}

impl From<usize> for Value {
    fn from(n: usize) -> Self {
        Self::Int(n as u64)
    }
}

impl From<String> for Value {
    fn from(s: String) -> Self {
        Self::Text(s)
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Self::Text(s.to_owned())
    }
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Self {
        v.map_or(Self::Missing, Into::into)
    }
}

struct Row {
    key: &'static str,
    label: Label,
    /// One value, or one per column.
    values: Vec<Value>,
    unit: &'static str,
}

struct Section {
    key: &'static str,
    title: Label,
    rows: Vec<Row>,
}

pub struct Report {
    scenario: &'static str,
    title: String,
    columns: Vec<String>,
    sections: Vec<Section>,
    notes: Vec<String>,
}

impl Report {
    pub fn new(scenario: &'static str, title: String) -> Self {
        Self { scenario, title, columns: Vec::new(), sections: Vec::new(), notes: Vec::new() }
    }

    /// Names the columns of [`Report::row_each`] rows.
    pub fn columns(&mut self, names: Vec<String>) -> &mut Self {
        self.columns = names;
        self
    }

    /// Starts a section; `key` names it in the JSON.
    pub fn section(&mut self, key: &'static str, title: impl Into<Label>) -> &mut Self {
        self.sections.push(Section { key, title: title.into(), rows: Vec::new() });
        self
    }

    /// Adds a row to the current section; `key` names it in the JSON.
    pub fn row(
        &mut self,
        key: &'static str,
        label: impl Into<Label>,
        value: impl Into<Value>,
        unit: &'static str,
    ) -> &mut Self {
        self.push(Row { key, label: label.into(), values: vec![value.into()], unit })
    }

    /// Adds a row with one value per column (see [`Report::columns`]).
    pub fn row_each<V: Into<Value>>(
        &mut self,
        key: &'static str,
        label: impl Into<Label>,
        values: impl IntoIterator<Item = V>,
        unit: &'static str,
    ) -> &mut Self {
        let values = values.into_iter().map(Into::into).collect();
        self.push(Row { key, label: label.into(), values, unit })
    }

    fn push(&mut self, row: Row) -> &mut Self {
        if self.sections.is_empty() {
            self.section("figures", "figures");
        }
        if let Some(section) = self.sections.last_mut() {
            section.rows.push(row);
        }
        self
    }

    /// A line printed under the table (and kept in the JSON), for things a
    /// reader must know to trust the figures.
    pub fn note(&mut self, note: String) -> &mut Self {
        self.notes.push(note);
        self
    }

    pub fn print(&self, out: &mut impl Write) -> std::io::Result<()> {
        let rows = || self.sections.iter().flat_map(|s| &s.rows);
        let label_w = rows().map(|r| r.label.chars().count()).max().unwrap_or(0);
        let columns = self.columns.len().max(1);
        // Width of each column. With one column, text (a command line, say)
        // is left-aligned and widens nothing; a shared value in a report with
        // several columns neither.
        let mut widths: Vec<usize> =
            (0..columns).map(|c| self.columns.get(c).map_or(0, |h| h.chars().count())).collect();
        for r in rows().filter(|r| r.values.len() == columns) {
            for (w, v) in widths.iter_mut().zip(&r.values) {
                if columns > 1 || !matches!(v, Value::Text(_)) {
                    *w = (*w).max(v.shown().chars().count());
                }
            }
        }
        writeln!(out, "\n{}\n", self.title)?;
        if !self.columns.is_empty() {
            let heads: Vec<String> =
                self.columns.iter().zip(&widths).map(|(h, w)| format!("{h:>w$}")).collect();
            writeln!(out, "  {:label_w$}  {}", "", heads.join("  "))?;
        }
        for section in &self.sections {
            writeln!(out, "{}", section.title)?;
            for r in &section.rows {
                let line = if r.values.len() == columns
                    && !(columns == 1 && matches!(r.values[0], Value::Text(_)))
                {
                    let cells: Vec<String> =
                        r.values.iter().zip(&widths).map(|(v, w)| format!("{:>w$}", v.shown())).collect();
                    format!("  {:label_w$}  {} {}", r.label, cells.join("  "), r.unit)
                } else {
                    let shown: Vec<String> = r.values.iter().map(Value::shown).collect();
                    format!("  {:label_w$}  {} {}", r.label, shown.join(" | "), r.unit)
                };
                writeln!(out, "{}", line.trim_end())?;
            }
            writeln!(out)?;
        }
        for note in &self.notes {
            writeln!(out, "note: {note}")?;
        }
        out.flush()
    }

    pub fn to_json(&self) -> Json {
        let mut doc = Map::new();
        doc.insert("scenario".into(), self.scenario.into());
        doc.insert("title".into(), self.title.as_str().into());
        if !self.columns.is_empty() {
            doc.insert("columns".into(), self.columns.clone().into());
        }
        for section in &self.sections {
            // One value (a shared row, or a report of one column): a scalar.
            let json = |r: &Row| match r.values.as_slice() {
                [one] => one.json(),
                many => Json::Array(many.iter().map(Value::json).collect()),
            };
            let rows = section.rows.iter().map(|r| (r.key.to_owned(), json(r))).collect();
            doc.insert(section.key.into(), Json::Object(rows));
        }
        doc.insert("notes".into(), self.notes.clone().into());
        Json::Object(doc)
    }

    pub fn write_json(&self, path: &Path) -> anyhow::Result<()> {
        let mut text = serde_json::to_string_pretty(&self.to_json()).context("encoding the figures")?;
        text.push('\n');
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Report {
        let mut r = Report::new("demo", "demo run".into());
        r.section("params", "parameters").row("events", "events", 10u32, "").row("bin", "binary", "x", "");
        r.section("upstream", "upstream").row("rps", "requests/s", Value::Float(1999.456, 1), "req/s");
        r.note("a note".into());
        r
    }

    #[test]
    fn table_aligns_and_rounds() {
        let mut out = Vec::new();
        sample().print(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("  requests/s  1999.5 req/s\n"), "{text}");
        assert!(text.contains("  events          10\n"), "{text}");
        assert!(text.contains("note: a note"), "{text}");
    }

    #[test]
    fn json_groups_by_section() {
        let j = sample().to_json();
        assert_eq!(j["params"]["events"], 10);
        assert_eq!(j["upstream"]["rps"], 1999.5);
        assert_eq!(j["scenario"], "demo");
        assert_eq!(j["notes"][0], "a note");
        assert!(j.get("columns").is_none());
    }

    #[test]
    fn columns_side_by_side() {
        let mut r = Report::new("demo", "sizes".into());
        r.columns(vec!["1000".into(), "15000".into()]);
        r.section("params", "parameters").row("cmd", "command", "edge --x", "");
        r.section("lat", "latency")
            .row_each("p99_ms", "p99", [Value::Float(3.25, 1), Value::Float(120.0, 1)], "ms")
            .row_each("errors", "errors", [0u64, 12], "")
            .row_each("max_ms", "max", [Value::Missing, Value::Float(1.0, 1)], "ms");
        let mut out = Vec::new();
        r.print(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("\n           1000  15000\n"), "{text}");
        assert!(text.contains("\n  p99       3.2  120.0 ms\n"), "{text}");
        assert!(text.contains("\n  errors      0     12\n"), "{text}");
        assert!(text.contains("\n  max       n/a    1.0 ms\n"), "{text}");
        assert!(text.contains("  command  edge --x\n"), "{text}");
        let j = r.to_json();
        assert_eq!(j["columns"][1], "15000");
        assert_eq!(j["lat"]["p99_ms"][1], 120.0);
        assert_eq!(j["lat"]["max_ms"][0], Json::Null);
        assert_eq!(j["params"]["cmd"], "edge --x");
    }
}
