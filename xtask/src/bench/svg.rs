//! A hand-written SVG: per request pattern and back end, IOPS (linear) and p99 latency (log)
//! against queue depth, one line per target.

use std::fmt::Write as _;

use super::{report, Row, Thing, THINGS};

const CHART_W: f64 = 420.0;
const CHART_H: f64 = 220.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 28.0;
const BOTTOM: f64 = 36.0;
const GAP: f64 = 24.0;
const HEADER: f64 = 64.0;

fn colour(t: Thing) -> (&'static str, &'static str) {
    match t {
        Thing::Xblade => ("#d62728", ""),
        Thing::Vblade => ("#1f77b4", ""),
        Thing::Echo => ("#2ca02c", "6 3"),
        Thing::Fio => ("#7f7f7f", "2 3"),
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
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

struct Chart<'a> {
    x0: f64,
    y0: f64,
    title: String,
    rows: &'a [&'a Row],
    log: bool,
    value: fn(&Row, Thing) -> Option<f64>,
}

impl Chart<'_> {
    fn draw(&self, out: &mut String) {
        let (pw, ph) = (CHART_W - LEFT - RIGHT, CHART_H - TOP - BOTTOM);
        let (px, py) = (self.x0 + LEFT, self.y0 + TOP);
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{:.1}" font-size="13" font-weight="bold">{}</text>"#,
            px,
            self.y0 + 16.0,
            esc(&self.title)
        );
        let _ = writeln!(
            out,
            r##"<rect x="{px:.1}" y="{py:.1}" width="{pw:.1}" height="{ph:.1}" fill="#fafafa" stroke="#999"/>"##
        );
        let values: Vec<f64> = self
            .rows
            .iter()
            .flat_map(|r| THINGS.iter().filter_map(move |t| (self.value)(r, *t)))
            .filter(|v| v.is_finite() && *v > 0.0)
            .collect();
        let n = self.rows.len().max(1);
        let xs = |i: usize| {
            if n == 1 {
                px + pw / 2.0
            } else {
                px + pw * (0.06 + 0.88 * i as f64 / (n - 1) as f64)
            }
        };
        for (i, r) in self.rows.iter().enumerate() {
            let x = xs(i);
            let _ = writeln!(
                out,
                r#"<text x="{x:.1}" y="{:.1}" font-size="11" text-anchor="middle">{}</text>"#,
                py + ph + 14.0,
                r.qd
            );
        }
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{:.1}" font-size="11" text-anchor="middle">queue depth</text>"#,
            px + pw / 2.0,
            py + ph + 30.0
        );
        if values.is_empty() {
            let _ = writeln!(
                out,
                r##"<text x="{:.1}" y="{:.1}" font-size="12" text-anchor="middle" fill="#666">no data (n/a)</text>"##,
                px + pw / 2.0,
                py + ph / 2.0
            );
            return;
        }
        let max = values.iter().copied().fold(f64::MIN, f64::max);
        let min = values.iter().copied().fold(f64::MAX, f64::min);
        let (lo, hi, ticks): (f64, f64, Vec<f64>) = if self.log {
            let lo = 10f64.powf(min.log10().floor());
            let mut hi = 10f64.powf(max.log10().ceil());
            if hi <= lo {
                hi = lo * 10.0;
            }
            let mut t = Vec::new();
            let mut v = lo;
            while v <= hi * 1.000_001 {
                t.push(v);
                v *= 10.0;
            }
            (lo, hi, t)
        } else {
            let hi = nice_ceil(max);
            (0.0, hi, (0..=4).map(|i| hi * f64::from(i) / 4.0).collect())
        };
        let ys = |v: f64| {
            let f = if self.log {
                (v.log10() - lo.log10()) / (hi.log10() - lo.log10())
            } else {
                (v - lo) / (hi - lo)
            };
            py + ph - f.clamp(0.0, 1.0) * ph
        };
        for t in ticks {
            let y = ys(t);
            let label = if self.log {
                latency_label(t)
            } else {
                report::si(t)
            };
            let _ = writeln!(
                out,
                r##"<line x1="{px:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" font-size="10" text-anchor="end">{}</text>"##,
                px + pw,
                px - 4.0,
                y + 3.5,
                esc(&label)
            );
        }
        for t in THINGS {
            let (stroke, dash) = colour(t);
            let points: Vec<(f64, f64)> = self
                .rows
                .iter()
                .enumerate()
                .filter_map(|(i, r)| {
                    (self.value)(r, t)
                        .filter(|v| v.is_finite() && *v > 0.0)
                        .map(|v| (xs(i), ys(v)))
                })
                .collect();
            if points.len() > 1 {
                let path: Vec<String> = points
                    .iter()
                    .map(|(x, y)| format!("{x:.1},{y:.1}"))
                    .collect();
                let _ = writeln!(
                    out,
                    r#"<polyline points="{}" fill="none" stroke="{stroke}" stroke-width="2" stroke-dasharray="{dash}"/>"#,
                    path.join(" ")
                );
            }
            for (x, y) in points {
                let _ = writeln!(
                    out,
                    r#"<circle cx="{x:.1}" cy="{y:.1}" r="3" fill="{stroke}"><title>{}</title></circle>"#,
                    t.name()
                );
            }
        }
    }
}

/// The whole SVG.
pub fn plot(rows: &[Row], title: &str) -> String {
    let panels = report::panels(rows);
    let width = 2.0 * CHART_W + GAP;
    let height = HEADER + panels.len().max(1) as f64 * (CHART_H + GAP);
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" font-family="sans-serif">"#
    );
    let _ = writeln!(
        out,
        r#"<rect width="100%" height="100%" fill="white"/><text x="12" y="22" font-size="15" font-weight="bold">{}</text>"#,
        esc(title)
    );
    let mut lx = 12.0;
    for t in THINGS {
        let (stroke, dash) = colour(t);
        let label = match t {
            Thing::Xblade => "xblade",
            Thing::Vblade => "vblade",
            Thing::Echo => "echo (ceiling, no storage)",
            Thing::Fio => "fio io_uring O_DIRECT (storage ceiling)",
        };
        let _ = writeln!(
            out,
            r#"<line x1="{lx:.1}" y1="44" x2="{:.1}" y2="44" stroke="{stroke}" stroke-width="2" stroke-dasharray="{dash}"/><text x="{:.1}" y="48" font-size="12">{label}</text>"#,
            lx + 24.0,
            lx + 30.0
        );
        lx += 44.0 + 6.2 * label.chars().count() as f64;
    }
    for (i, (name, prow)) in panels.iter().enumerate() {
        let y0 = HEADER + i as f64 * (CHART_H + GAP);
        Chart {
            x0: 0.0,
            y0,
            title: format!("{name}: IOPS"),
            rows: prow,
            log: false,
            value: |r, t| r.cell(t).iops(),
        }
        .draw(&mut out);
        Chart {
            x0: CHART_W + GAP,
            y0,
            title: format!("{name}: p99 latency"),
            rows: prow,
            log: true,
            value: |r, t| r.cell(t).p99_us(),
        }
        .draw(&mut out);
    }
    out.push_str("</svg>\n");
    out
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
        let svg = plot(&rows, "t <&>");
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert!(svg.contains("t &lt;&amp;&gt;") && svg.contains("no data"));
    }
}
