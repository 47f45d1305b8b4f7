//! The bench's SVG, drawn with `plotters`: per request pattern and back end (a panel), IOPS
//! (linear) and p99 latency (log) against queue depth, one line per target, under a title and
//! one legend.
//!
//! plotters is built with its SVG backend only: text goes into the SVG as `<text>` for the
//! viewer to render (no font files, no system libraries), so label widths are estimates.

use anyhow::{anyhow, Result};
use plotters::{
    coord::{
        combinators::{BindKeyPoints as _, WithKeyPoints},
        ranged1d::{AsRangedCoord, DefaultFormatting, KeyPointHint, Ranged, ValueFormatter},
        types::{RangedCoordf64, RangedCoordi32},
        Shift,
    },
    element::DashedPathElement,
    prelude::*,
    style::text_anchor::{HPos, Pos, VPos},
};

use super::{report, Row, Thing, THINGS};

/// One chart's size, and the gap between charts (pixels).
const CHART_W: u32 = 420;
const CHART_H: u32 = 220;
const GAP: u32 = 24;
/// The title and legend above the panels.
const HEADER: u32 = 64;
const FONT: &str = "sans-serif";

/// The font at `px` pixels: plotters writes `font-size` as the size it is given divided by
/// 1.24, so it is given 1.24 times the pixels wanted.
fn font(px: f64) -> FontDesc<'static> {
    (FONT, px * 1.24).into_font()
}

/// A linear axis from 0 to `top` with a tick at each quarter (and no light lines).
struct Quarters(RangedCoordf64);

impl Ranged for Quarters {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        self.0.map(value, limit)
    }

    fn key_points<Hint: KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        if hint.weight().allow_light_points() {
            return Vec::new();
        }
        let top = self.0.range().end;
        (0..=4).map(|i| top * f64::from(i) / 4.0).collect()
    }

    fn range(&self) -> std::ops::Range<f64> {
        self.0.range()
    }
}

/// Colour and dash pattern (dash, gap in pixels; none: a solid line) of a thing's line.
fn look(t: Thing) -> (RGBColor, Option<(u32, u32)>) {
    match t {
        Thing::Xblade => (RGBColor(0xd6, 0x27, 0x28), None),
        Thing::Vblade => (RGBColor(0x1f, 0x77, 0xb4), None),
        Thing::Echo => (RGBColor(0x2c, 0xa0, 0x2c), Some((6, 3))),
        Thing::Fio => (RGBColor(0x7f, 0x7f, 0x7f), Some((2, 3))),
    }
}

fn legend(t: Thing) -> &'static str {
    match t {
        Thing::Xblade => "xblade",
        Thing::Vblade => "vblade",
        Thing::Echo => "echo (ceiling, no storage)",
        Thing::Fio => "fio io_uring O_DIRECT (storage ceiling)",
    }
}

/// A round number at or above `v`: 1, 2 or 5 times a power of ten.
fn nice_ceil(v: f64) -> f64 {
    if v <= 0.0 || !v.is_finite() {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * p)
        .find(|c| *c >= v * 0.999_999)
        .unwrap_or(10.0 * p)
}

fn latency_label(us: f64) -> String {
    if us >= 1e6 {
        format!("{} s", us / 1e6)
    } else if us >= 1e3 {
        format!("{} ms", us / 1e3)
    } else {
        format!("{us} µs")
    }
}

/// plotters' errors carry the backend's; anyhow wants them `Send + Sync`, which they are.
fn drawing<E: std::error::Error + Send + Sync + 'static>(
    e: plotters::drawing::DrawingAreaErrorKind<E>,
) -> anyhow::Error {
    anyhow!("drawing the bench's SVG: {e}")
}

/// What one chart shows.
struct Chart<'a> {
    title: String,
    rows: &'a [&'a Row],
    /// Latency, on a log scale (else IOPS, linear from 0).
    log: bool,
    value: fn(&Row, Thing) -> Option<f64>,
}

impl Chart<'_> {
    /// The values to plot, per thing: (x, y), positive and finite only. The x of row `i` is
    /// `2 i`, so that the axis can run from -1 to `2 n - 1` in integers, half a step of margin
    /// on each side.
    fn points(&self, t: Thing) -> Vec<(i32, f64)> {
        (0..)
            .zip(self.rows)
            .filter_map(|(i, r)| {
                (self.value)(r, t)
                    .filter(|v| v.is_finite() && *v > 0.0)
                    .map(|v| (2 * i, v))
            })
            .collect()
    }

    fn draw(&self, area: &DrawingArea<SVGBackend<'_>, Shift>) -> Result<()> {
        let values: Vec<f64> = THINGS
            .iter()
            .flat_map(|t| self.points(*t))
            .map(|(_, y)| y)
            .collect();
        let n = i32::try_from(self.rows.len().max(1)).unwrap_or(i32::MAX / 2);
        // The queue depths at evenly spaced x, labelled with the QD.
        let x = (-1..2 * n - 1).with_key_points((0..n).map(|i| 2 * i).collect());
        if values.is_empty() {
            let y = Quarters(RangedCoordf64::from(0.0..1.0));
            return self.draw_in(area, x, y, &|_| String::new());
        }
        let max = values.iter().copied().fold(f64::MIN, f64::max);
        let min = values.iter().copied().fold(f64::MAX, f64::min);
        if self.log {
            let lo = 10f64.powf(min.log10().floor());
            let mut hi = 10f64.powf(max.log10().ceil());
            if hi <= lo {
                hi = lo * 10.0;
            }
            let decades = std::iter::successors(Some(lo), |v| Some(v * 10.0))
                .take_while(|v| *v <= hi * 1.000_001)
                .collect();
            let y = LogCoord::from((lo..hi).log_scale()).with_key_points(decades);
            self.draw_in(area, x, y, &|v| latency_label(*v))
        } else {
            let y = Quarters(RangedCoordf64::from(0.0..nice_ceil(max)));
            self.draw_in(area, x, y, &|v| report::si(*v))
        }
    }

    fn draw_in<Y>(
        &self,
        area: &DrawingArea<SVGBackend<'_>, Shift>,
        x: WithKeyPoints<RangedCoordi32>,
        y: impl AsRangedCoord<CoordDescType = Y, Value = f64>,
        y_label: &dyn Fn(&f64) -> String,
    ) -> Result<()>
    where
        Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
    {
        let mut chart = ChartBuilder::on(area)
            .caption(&self.title, font(13.0).style(FontStyle::Bold))
            .margin(6)
            .margin_right(16)
            .x_label_area_size(34)
            .y_label_area_size(54)
            .build_cartesian_2d(x, y)
            .map_err(drawing)?;
        chart
            .plotting_area()
            .fill(&RGBColor(0xfa, 0xfa, 0xfa))
            .map_err(drawing)?;
        let qd = |x: &i32| {
            usize::try_from(*x / 2)
                .ok()
                .and_then(|i| self.rows.get(i))
                .filter(|_| x % 2 == 0)
                .map_or_else(String::new, |r| r.qd.to_string())
        };
        chart
            .configure_mesh()
            .disable_x_mesh()
            .bold_line_style(RGBColor(0xdd, 0xdd, 0xdd))
            .axis_style(RGBColor(0x99, 0x99, 0x99))
            .x_label_formatter(&qd)
            .y_label_formatter(y_label)
            .x_desc("queue depth")
            .x_label_style(font(11.0))
            .y_label_style(font(10.0))
            .axis_desc_style(font(11.0))
            .draw()
            .map_err(drawing)?;
        let mut any = false;
        for t in THINGS {
            let points = self.points(t);
            any |= !points.is_empty();
            let (colour, dash) = look(t);
            let line = ShapeStyle::from(colour).stroke_width(2);
            if points.len() > 1 {
                match dash {
                    None => chart.draw_series(LineSeries::new(points.clone(), line)),
                    Some((size, gap)) => {
                        chart.draw_series(DashedLineSeries::new(points.clone(), size, gap, line))
                    }
                }
                .map_err(drawing)?;
            }
            chart
                .draw_series(
                    points
                        .iter()
                        .map(|p| Circle::new(*p, 3, ShapeStyle::from(colour).filled())),
                )
                .map_err(drawing)?;
        }
        if !any {
            let plot = chart.plotting_area();
            let (w, h) = plot.dim_in_pixel();
            let centre = Pos::new(HPos::Center, VPos::Center);
            plot.strip_coord_spec()
                .draw(&Text::new(
                    "no data (n/a)",
                    (w as i32 / 2, h as i32 / 2),
                    font(12.0).color(&RGBColor(0x66, 0x66, 0x66)).pos(centre),
                ))
                .map_err(drawing)?;
        }
        Ok(())
    }
}

/// The whole SVG.
pub fn plot(rows: &[Row], title: &str) -> Result<String> {
    let panels = report::panels(rows);
    let width = 2 * CHART_W + GAP;
    let height = HEADER + panels.len().max(1) as u32 * (CHART_H + GAP);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(drawing)?;
        let (header, body) = root.split_vertically(HEADER);
        header
            .draw(&Text::new(
                title,
                (12, 8),
                font(15.0).style(FontStyle::Bold),
            ))
            .map_err(drawing)?;
        let mut lx = 12;
        for t in THINGS {
            let (colour, dash) = look(t);
            let line = ShapeStyle::from(colour).stroke_width(2);
            let ends = vec![(lx, 44), (lx + 24, 44)];
            match dash {
                None => header.draw(&PathElement::new(ends, line)),
                Some((size, gap)) => header.draw(&DashedPathElement::new(ends, size, gap, line)),
            }
            .map_err(drawing)?;
            let label = legend(t);
            let left_middle = Pos::new(HPos::Left, VPos::Center);
            header
                .draw(&Text::new(
                    label,
                    (lx + 30, 44),
                    font(12.0).color(&BLACK).pos(left_middle),
                ))
                .map_err(drawing)?;
            lx += 44 + (6.2 * label.chars().count() as f64) as i32;
        }
        // One band per panel (a chart and the gap below it), two charts side by side.
        let bands = body.split_evenly((panels.len().max(1), 1));
        for ((name, prows), band) in panels.iter().zip(bands) {
            let (left, right) = band.split_horizontally(CHART_W);
            let left = left.shrink((0, 0), (CHART_W, CHART_H));
            let right = right.shrink((GAP, 0), (CHART_W, CHART_H));
            let charts = [
                (left, format!("{name}: IOPS"), false),
                (right, format!("{name}: p99 latency"), true),
            ];
            for (area, title, log) in charts {
                Chart {
                    title,
                    rows: prows,
                    log,
                    value: if log {
                        |r, t| r.cell(t).p99_us()
                    } else {
                        |r, t| r.cell(t).iops()
                    },
                }
                .draw(&area)?;
            }
        }
        root.present().map_err(drawing)?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scales() {
        assert_eq!(nice_ceil(495_000.0), 500_000.0);
        assert_eq!(nice_ceil(120.0), 200.0);
        assert_eq!(nice_ceil(1.0), 1.0);
        assert_eq!(latency_label(1000.0), "1 ms");
        assert_eq!(latency_label(10.0), "10 µs");
    }

    #[test]
    fn plots_empty_and_pending_rows() {
        let (rows, _) = super::super::plan(true);
        let svg = plot(&rows, "t <&>").unwrap();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("t &lt;&amp;&gt;") && svg.contains("no data (n/a)"));
        // One panel per pattern and back end, two charts each.
        let panels = report::panels(&rows).len();
        assert_eq!(svg.matches(": IOPS\n</text>").count(), panels);
        assert_eq!(svg.matches(": p99 latency\n</text>").count(), panels);
    }
}
