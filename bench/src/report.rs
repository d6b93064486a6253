//! The output of a scenario: a table for people and, with `--json PATH`, the
//! same figures as JSON for scripts comparing runs. Scenarios only add rows;
//! layout and number formatting live here so every scenario reads alike.

use anyhow::Context;
use serde_json::{Map, Value as Json};
use std::{io::Write, path::Path};

/// A figure's value and how it is shown.
#[derive(Debug, Clone)]
pub enum Value {
    Int(u64),
    /// A number shown with this many decimals.
    Float(f64, usize),
    Text(String),
}

impl Value {
    fn shown(&self) -> String {
        match self {
            Self::Int(n) => n.to_string(),
            Self::Float(x, decimals) => format!("{x:.decimals$}"),
            Self::Text(s) => s.clone(),
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

struct Row {
    key: &'static str,
    label: &'static str,
    value: Value,
    unit: &'static str,
}

struct Section {
    key: &'static str,
    title: &'static str,
    rows: Vec<Row>,
}

pub struct Report {
    scenario: &'static str,
    title: String,
    sections: Vec<Section>,
    notes: Vec<String>,
}

impl Report {
    pub fn new(scenario: &'static str, title: String) -> Self {
        Self { scenario, title, sections: Vec::new(), notes: Vec::new() }
    }

    /// Starts a section; `key` names it in the JSON.
    pub fn section(&mut self, key: &'static str, title: &'static str) -> &mut Self {
        self.sections.push(Section { key, title, rows: Vec::new() });
        self
    }

    /// Adds a row to the current section; `key` names it in the JSON.
    pub fn row(
        &mut self,
        key: &'static str,
        label: &'static str,
        value: impl Into<Value>,
        unit: &'static str,
    ) -> &mut Self {
        if self.sections.is_empty() {
            self.section("figures", "figures");
        }
        if let Some(section) = self.sections.last_mut() {
            section.rows.push(Row { key, label, value: value.into(), unit });
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
        // Text (a command line, say) is left-aligned and does not widen the
        // column of numbers.
        let numbers = || rows().filter(|r| !matches!(r.value, Value::Text(_)));
        let value_w = numbers().map(|r| r.value.shown().chars().count()).max().unwrap_or(0);
        writeln!(out, "\n{}\n", self.title)?;
        for section in &self.sections {
            writeln!(out, "{}", section.title)?;
            for r in &section.rows {
                let value = r.value.shown();
                let line = match r.value {
                    Value::Text(_) => format!("  {:label_w$}  {value} {}", r.label, r.unit),
                    _ => format!("  {:label_w$}  {value:>value_w$} {}", r.label, r.unit),
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
        for section in &self.sections {
            let rows = section.rows.iter().map(|r| (r.key.to_owned(), r.value.json())).collect();
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
    }
}
