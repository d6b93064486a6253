//! The fan-out figures as a picture: delivery latency (p50, p99) and edge RSS
//! per connection against the number of connections, each next to its target
//! from the issue, so a reader sees at a glance how the edge scales and where
//! it crosses a target.
//!
//! SVG only (plotters' SVG backend needs no fonts or system libraries; text
//! sizes are estimated, and the viewer renders the text).

use crate::stack::ensure_parent;
use anyhow::{Context, anyhow};
use plotters::prelude::*;
use std::path::Path;

/// One size of the fan-out run.
#[derive(Debug, Clone, Copy)]
pub struct Point {
    pub connections: u64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub rss_per_conn_kib: f64,
}

const P50: RGBColor = RGBColor(31, 119, 180);
const P99: RGBColor = RGBColor(214, 39, 40);
const RSS: RGBColor = RGBColor(44, 160, 44);
const TARGET: RGBColor = RGBColor(255, 127, 14);

/// Writes the two-panel SVG to `path`.
pub fn fanout(path: &Path, points: &[Point], target_p99_ms: f64, target_rss_kib: f64) -> anyhow::Result<()> {
    ensure_parent(path)?;
    draw(path, points, target_p99_ms, target_rss_kib)
        .map_err(|e| anyhow!("{e}"))
        .with_context(|| format!("drawing {}", path.display()))
}

fn draw(
    path: &Path,
    points: &[Point],
    target_p99_ms: f64,
    target_rss_kib: f64,
) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::new(path, (1100, 460)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled("livepush fan-out: one edge, one event, N SSE connections", ("sans-serif", 22))?;
    let (left, right) = root.split_horizontally(550);
    let x_max = points.iter().map(|p| p.connections).max().unwrap_or(1) as f64 * 1.1;
    let xy = |pick: fn(&Point) -> Option<f64>| -> Vec<(f64, f64)> {
        points.iter().filter_map(|p| Some((p.connections as f64, pick(p)?))).collect()
    };

    // Latency.
    let p50 = xy(|p| p.p50_ms);
    let p99 = xy(|p| p.p99_ms);
    let y_max = p99.iter().chain(&p50).map(|&(_, y)| y).fold(target_p99_ms, f64::max) * 1.15;
    let mut chart = ChartBuilder::on(&left)
        .caption("delivery latency, media-sim served -> browser read", ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(55)
        .build_cartesian_2d(0f64..x_max, 0f64..y_max)?;
    chart
        .configure_mesh()
        .x_desc("SSE connections on the edge")
        .y_desc("ms")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .light_line_style(WHITE)
        .draw()?;
    chart
        .draw_series(target_line(x_max, target_p99_ms))?
        .label(format!("target p99 < {target_p99_ms:.0} ms"))
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], TARGET));
    for (name, series, color) in [("p50", &p50, P50), ("p99", &p99, P99)] {
        chart
            .draw_series(LineSeries::new(series.iter().copied(), color.stroke_width(2)))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        chart.draw_series(series.iter().map(|&p| Circle::new(p, 4, color.filled())))?;
        // Each value written just above and right of its point.
        chart.draw_series(series.iter().map(|&(x, y)| {
            EmptyElement::at((x, y)) + Text::new(format!("{y:.1}"), (6, -16), label_font(color))
        }))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;

    // RSS per connection.
    let rss: Vec<(f64, f64)> = points.iter().map(|p| (p.connections as f64, p.rss_per_conn_kib)).collect();
    let y_max = rss.iter().map(|&(_, y)| y).fold(target_rss_kib, f64::max) * 1.25;
    let mut chart = ChartBuilder::on(&right)
        .caption("edge RSS per SSE connection, (connected - idle) / N", ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(55)
        .build_cartesian_2d(0f64..x_max, 0f64..y_max)?;
    chart
        .configure_mesh()
        .x_desc("SSE connections on the edge")
        .y_desc("KiB per connection")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .light_line_style(WHITE)
        .draw()?;
    chart
        .draw_series(target_line(x_max, target_rss_kib))?
        .label(format!("target <= {target_rss_kib:.0} KiB"))
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], TARGET));
    chart
        .draw_series(LineSeries::new(rss.iter().copied(), RSS.stroke_width(2)))?
        .label("measured")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RSS.stroke_width(2)));
    chart.draw_series(rss.iter().map(|&p| Circle::new(p, 4, RSS.filled())))?;
    chart.draw_series(
        rss.iter().map(|&(x, y)| {
            EmptyElement::at((x, y)) + Text::new(format!("{y:.1}"), (6, -16), label_font(RSS))
        }),
    )?;
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

/// A dashed horizontal line across the chart at `y`.
fn target_line(x_max: f64, y: f64) -> DashedLineSeries<std::array::IntoIter<(f64, f64), 2>, i32> {
    DashedLineSeries::new([(0.0, y), (x_max, y)], 8, 5, TARGET.stroke_width(2))
}

/// The font of the value written next to each point.
fn label_font(color: RGBColor) -> TextStyle<'static> {
    ("sans-serif", 13).into_font().color(&color)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_an_svg_with_the_figures() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/fanout.svg");
        let points = [
            Point { connections: 1000, p50_ms: Some(2.0), p99_ms: Some(5.5), rss_per_conn_kib: 9.1 },
            Point { connections: 15000, p50_ms: Some(20.0), p99_ms: None, rss_per_conn_kib: 8.7 },
        ];
        fanout(&path, &points, 50.0, 6.0).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..100.min(svg.len())]);
        for text in ["5.5", "9.1", "8.7", "target p99 &lt; 50 ms", "SSE connections on the edge"] {
            assert!(svg.contains(text), "{text} missing");
        }
    }
}
