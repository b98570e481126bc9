//! The peers harness's chart: one SVG with two horizontal bar panels side by side, CPU per
//! request and throughput, one bar per (path, server), coloured by server (plotters, SVG only).

use std::path::Path;

use plotters::prelude::*;

/// One bar of each panel.
#[derive(Debug, Clone)]
pub struct Bar {
    /// e.g. "cache hit · NGINX".
    pub label: String,
    /// Index into the palette, the same for every bar of one server.
    pub colour: usize,
    pub cpu_us: f64,
    pub kreq_s: f64,
}

const PALETTE: [RGBColor; 5] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
];

fn panel(
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    title: &str,
    bars: &[Bar],
    value: impl Fn(&Bar) -> f64,
    with_labels: bool,
) -> anyhow::Result<()> {
    let max = bars.iter().map(&value).fold(0.0, f64::max).max(1.0) * 1.15;
    let n = bars.len() as i32;
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(if with_labels { 230 } else { 10 })
        .build_cartesian_2d(0.0..max, 0..n)
        .map_err(|e| anyhow::anyhow!("chart: {e}"))?;
    let labels: Vec<String> = bars.iter().map(|b| b.label.clone()).collect();
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(bars.len() + 1)
        .y_label_formatter(&|i| {
            // Bar i spans [n-1-i, n-i): the first bar on top.
            let index = (n - 1 - *i) as usize;
            if with_labels {
                labels.get(index).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_label_offset(-12)
        .draw()
        .map_err(|e| anyhow::anyhow!("chart: {e}"))?;
    chart
        .draw_series(bars.iter().enumerate().map(|(i, bar)| {
            let row = n - 1 - i as i32;
            let colour = PALETTE[bar.colour % PALETTE.len()];
            let mut rectangle =
                Rectangle::new([(0.0, row), (value(bar), row + 1)], colour.filled());
            rectangle.set_margin(2, 2, 0, 0);
            rectangle
        }))
        .map_err(|e| anyhow::anyhow!("chart: {e}"))?;
    chart
        .draw_series(bars.iter().enumerate().map(|(i, bar)| {
            let row = n - 1 - i as i32;
            Text::new(
                format!("{:.1}", value(bar)),
                (value(bar) + max * 0.01, row + 1),
                ("sans-serif", 13),
            )
        }))
        .map_err(|e| anyhow::anyhow!("chart: {e}"))?;
    Ok(())
}

/// Writes the chart to `path`; `title` goes on top.
pub fn write_svg(path: &Path, title: &str, bars: &[Bar]) -> anyhow::Result<()> {
    let height = 90 + 34 * bars.len() as u32;
    let root = SVGBackend::new(path, (1100, height)).into_drawing_area();
    root.fill(&WHITE)
        .map_err(|e| anyhow::anyhow!("chart: {e}"))?;
    let root = root
        .titled(title, ("sans-serif", 20))
        .map_err(|e| anyhow::anyhow!("chart: {e}"))?;
    let (left, right) = root.split_horizontally(640);
    panel(
        &left,
        "CPU per request, µs (lower is better)",
        bars,
        |b| b.cpu_us,
        true,
    )?;
    panel(
        &right,
        "throughput, k req/s (higher is better)",
        bars,
        |b| b.kreq_s,
        false,
    )?;
    root.present().map_err(|e| anyhow::anyhow!("chart: {e}"))?;
    Ok(())
}
