//! Hand-drawn SVG charts: line charts with axes, units, a legend, a shaded band and vertical marks, and a step chart
//! for weights. Pure: data in, markup out. Colours come from CSS classes (no inline styles, so a strict CSP holds).

use std::fmt::Write;

use crate::html::esc;

const W: f64 = 560.0;
const H: f64 = 220.0;
const LEFT: f64 = 56.0;
const RIGHT: f64 = 12.0;
const TOP: f64 = 28.0;
const BOTTOM: f64 = 36.0;

/// One line of a chart.
#[derive(Debug, Clone)]
pub(crate) struct Series {
    pub name: String,
    /// CSS class: `s-base`, `s-canary`, `s-weight`.
    pub class: &'static str,
    pub points: Vec<(f64, f64)>,
    /// Drawn as steps (hold the value until the next point).
    pub steps: bool,
}

/// A vertical mark: a decision, with its label.
#[derive(Debug, Clone)]
pub(crate) struct Mark {
    pub x: f64,
    pub label: String,
    /// CSS class: `m-pass`, `m-fail`, `m-info`.
    pub class: &'static str,
}

/// A shaded stretch of time behind the lines: a step's hold, or its extension.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Span {
    pub x0: f64,
    pub x1: f64,
    /// CSS class: `sp-hold`, `sp-ext`.
    pub class: &'static str,
    pub label: String,
}

/// What a span class is called in the legend.
fn span_name(class: &str) -> &'static str {
    match class {
        "sp-ext" => "extension",
        _ => "hold",
    }
}

/// A chart: x in seconds, y in `unit`.
#[derive(Debug, Clone, Default)]
pub(crate) struct Chart {
    pub id: String,
    pub title: String,
    pub unit: String,
    pub series: Vec<Series>,
    /// The tolerance band: (x, low, high) points.
    pub band: Vec<(f64, f64, f64)>,
    pub band_name: String,
    pub marks: Vec<Mark>,
    /// Holds and extensions, shaded across the chart's height.
    pub spans: Vec<Span>,
    /// Fixed y range (else from the data, from 0).
    pub y_max: Option<f64>,
}

/// A "nice" tick step (1, 2 or 5 times a power of ten) for about `n` ticks over `span`.
pub(crate) fn tick_step(span: f64, n: f64) -> f64 {
    if !(span.is_finite() && span > 0.0) {
        return 1.0;
    }
    let raw = span / n;
    let mag = 10f64.powf(raw.log10().floor());
    let f = raw / mag;
    let nice = if f <= 1.0 {
        1.0
    } else if f <= 2.0 {
        2.0
    } else if f <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * mag
}

/// A number as a tick label: no more digits than the step needs.
pub(crate) fn tick_label(v: f64, step: f64) -> String {
    let digits = if step >= 1.0 {
        0
    } else {
        (-step.log10().floor()) as usize
    };
    format!("{v:.digits$}")
}

struct Frame {
    x_max: f64,
    y_max: f64,
}

impl Frame {
    fn x(&self, v: f64) -> f64 {
        LEFT + (W - LEFT - RIGHT) * (v / self.x_max).clamp(0.0, 1.0)
    }
    fn y(&self, v: f64) -> f64 {
        H - BOTTOM - (H - TOP - BOTTOM) * (v / self.y_max).clamp(0.0, 1.0)
    }
}

fn frame(c: &Chart) -> Frame {
    let xs = c.series.iter().flat_map(|s| s.points.iter().map(|p| p.0));
    let xs = xs.chain(c.marks.iter().map(|m| m.x)).chain(c.band.iter().map(|b| b.0));
    let xs = xs.chain(c.spans.iter().map(|s| s.x1));
    let x_max = xs.fold(0.0f64, f64::max).max(10.0);
    let ys = c.series.iter().flat_map(|s| s.points.iter().map(|p| p.1));
    let ys = ys.chain(c.band.iter().map(|b| b.2)).filter(|v| v.is_finite());
    let y_max = c.y_max.unwrap_or_else(|| {
        let m = ys.fold(0.0f64, f64::max);
        if m > 0.0 { m * 1.1 } else { 1.0 }
    });
    Frame { x_max, y_max }
}

fn axes(out: &mut String, f: &Frame, c: &Chart) {
    let ys = tick_step(f.y_max, 4.0);
    let mut v = 0.0;
    while v <= f.y_max + ys * 1e-9 {
        let y = f.y(v);
        let _ = write!(
            out,
            "<line class=\"grid\" x1=\"{LEFT}\" x2=\"{:.1}\" y1=\"{y:.1}\" y2=\"{y:.1}\"/><text class=\"\
                tick\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            W - RIGHT,
            LEFT - 4.0,
            y + 4.0,
            tick_label(v, ys)
        );
        v += ys;
    }
    let xs = tick_step(f.x_max, 6.0);
    let mut v = 0.0;
    while v <= f.x_max + xs * 1e-9 {
        let x = f.x(v);
        let _ = write!(
            out,
            "<line class=\"axis\" x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"{:.1}\" y2=\"{:.1}\"/><text class=\"\
                tick\" x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            H - BOTTOM,
            H - BOTTOM + 4.0,
            H - BOTTOM + 16.0,
            tick_label(v, xs)
        );
        v += xs;
    }
    let _ = write!(
        out,
        "<line class=\"axis\" x1=\"{LEFT}\" x2=\"{LEFT}\" y1=\"{TOP}\" y2=\"{:.1}\"/><line class=\"\
            axis\" x1=\"{LEFT}\" x2=\"{:.1}\" y1=\"{b:.1}\" y2=\"{b:.1}\"/><text class=\"label\" x=\"\
            {:.1}\" y=\"{:.1}\" text-anchor=\"middle\">time since the deploy started (s)</text><text \
            class=\"label\" x=\"12\" y=\"{:.1}\" text-anchor=\"middle\" transform=\"rotate(-90 12 {:.1})\"\
            >{}</text>",
        H - BOTTOM,
        W - RIGHT,
        LEFT + (W - LEFT - RIGHT) / 2.0,
        H - 4.0,
        TOP + (H - TOP - BOTTOM) / 2.0,
        TOP + (H - TOP - BOTTOM) / 2.0,
        esc(&c.unit),
        b = H - BOTTOM,
    );
}

fn path(f: &Frame, s: &Series) -> String {
    let mut d = String::new();
    let mut last_y = None;
    for (i, (x, y)) in s.points.iter().filter(|p| p.1.is_finite()).enumerate() {
        let (px, py) = (f.x(*x), f.y(*y));
        if i == 0 {
            let _ = write!(d, "M{px:.1},{py:.1}");
        } else {
            if s.steps
                && let Some(ly) = last_y
            {
                let _ = write!(d, "L{px:.1},{ly:.1}");
            }
            let _ = write!(d, "L{px:.1},{py:.1}");
        }
        last_y = Some(py);
    }
    d
}

fn band(out: &mut String, f: &Frame, c: &Chart) {
    let pts: Vec<_> = c.band.iter().filter(|b| b.1.is_finite() && b.2.is_finite()).collect();
    if pts.len() < 2 {
        return;
    }
    let mut d = String::new();
    for (i, (x, _, hi)) in pts.iter().enumerate() {
        let _ = write!(d, "{}{:.1},{:.1}", if i == 0 { "M" } else { "L" }, f.x(*x), f.y(*hi));
    }
    for (x, lo, _) in pts.iter().rev() {
        let _ = write!(d, "L{:.1},{:.1}", f.x(*x), f.y(*lo));
    }
    let _ = write!(
        out,
        r#"<path class="band" d="{d}Z"><title>{}</title></path>"#,
        esc(&c.band_name)
    );
}

fn spans(out: &mut String, f: &Frame, c: &Chart) {
    for s in &c.spans {
        let (x0, x1) = (f.x(s.x0), f.x(s.x1));
        let _ = write!(
            out,
            "<rect class=\"span {}\" x=\"{x0:.1}\" y=\"{TOP}\" width=\"{:.1}\" height=\"{:.1}\"><title>{}</title></rect>",
            s.class,
            (x1 - x0).max(0.0),
            H - TOP - BOTTOM,
            esc(&s.label)
        );
    }
}

fn legend(out: &mut String, c: &Chart) {
    let mut x = LEFT;
    let mut item = |out: &mut String, class: &str, name: &str| {
        let _ = write!(
            out,
            "<rect class=\"{class} key\" x=\"{x:.1}\" y=\"8\" width=\"14\" height=\"8\"/><text class=\"\
                legend\" x=\"{:.1}\" y=\"16\">{}</text>",
            x + 18.0,
            esc(name)
        );
        x += 26.0 + 6.5 * name.chars().count() as f64;
    };
    for s in &c.series {
        item(out, s.class, &s.name);
    }
    if !c.band.is_empty() {
        item(out, "band", &c.band_name);
    }
    for class in ["sp-hold", "sp-ext"] {
        if c.spans.iter().any(|s| s.class == class) {
            item(out, class, span_name(class));
        }
    }
    if let Some(m) = c.marks.first() {
        item(out, m.class, "decision");
    }
}

/// The chart as an `<svg>` element (scales with its container).
pub(crate) fn chart(c: &Chart) -> String {
    let f = frame(c);
    let mut out = format!(
        "<figure class=\"chart\" id=\"{}\"><figcaption>{}</figcaption><svg viewBox=\"0 0 {W} {H}\" \
            role=\"img\" aria-label=\"{}\">",
        esc(&c.id),
        esc(&c.title),
        esc(&c.title)
    );
    spans(&mut out, &f, c);
    axes(&mut out, &f, c);
    band(&mut out, &f, c);
    for s in &c.series {
        let d = path(&f, s);
        if !d.is_empty() {
            let n = s.points.len();
            let _ = write!(
                out,
                r#"<path class="line {}" data-points="{n}" d="{d}"><title>{}</title></path>"#,
                s.class,
                esc(&s.name)
            );
        }
    }
    for (i, m) in c.marks.iter().enumerate() {
        let x = f.x(m.x);
        let label_y = TOP + 10.0 + 12.0 * (i % 3) as f64;
        let _ = write!(
            out,
            "<line class=\"mark {}\" x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"{TOP}\" y2=\"{:.1}\"/><text \
                class=\"mark-label\" x=\"{:.1}\" y=\"{:.1}\">{}</text>",
            m.class,
            H - BOTTOM,
            x + 3.0,
            label_y,
            esc(&m.label)
        );
    }
    legend(&mut out, c);
    out.push_str("</svg></figure>");
    out
}

/// A sparkline: a small line of `values` (oldest first) from 0 to their maximum, with no axes.
pub(crate) fn sparkline(values: &[f64], class: &str, title: &str) -> String {
    const SW: f64 = 160.0;
    const SH: f64 = 32.0;
    let max = values.iter().copied().filter(|v| v.is_finite()).fold(0.0f64, f64::max);
    let n = values.len().max(2) as f64 - 1.0;
    let mut d = String::new();
    for (i, v) in values.iter().enumerate() {
        let y = if max > 0.0 {
            SH - 2.0 - (SH - 4.0) * (v / max)
        } else {
            SH - 2.0
        };
        let _ = write!(d, "{}{:.1},{:.1}", if i == 0 { "M" } else { "L" }, SW * i as f64 / n, y);
    }
    format!(
        "<svg class=\"spark\" viewBox=\"0 0 {SW} {SH}\" role=\"img\" aria-label=\"{t}\"><title>{t}</title>\
         <path class=\"line {class}\" data-points=\"{}\" d=\"{d}\"/></svg>",
        values.len(),
        t = esc(title)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tick_steps_are_one_two_or_five_times_a_power_of_ten() {
        assert_eq!(tick_step(100.0, 4.0), 50.0);
        assert_eq!(tick_step(7.0, 6.0), 2.0);
        assert_eq!(tick_step(0.012, 4.0), 0.005);
        assert_eq!(tick_step(0.0, 4.0), 1.0);
        assert_eq!(tick_step(f64::NAN, 4.0), 1.0);
        assert_eq!(tick_label(0.005, 0.005), "0.005");
        assert_eq!(tick_label(20.0, 10.0), "20");
    }

    #[test]
    fn a_chart_has_axes_with_its_unit_a_legend_each_line_its_band_and_its_marks() {
        let c = Chart {
            id: "p99".into(),
            title: "p99 latency".into(),
            unit: "ms".into(),
            series: vec![
                Series {
                    name: "baseline".into(),
                    class: "s-base",
                    points: vec![(0.0, 1.0), (5.0, 2.0), (10.0, f64::NAN), (15.0, 2.5)],
                    steps: false,
                },
                Series {
                    name: "canary <v2>".into(),
                    class: "s-canary",
                    points: vec![(0.0, 1.5), (5.0, 9.0)],
                    steps: false,
                },
            ],
            band: vec![(0.0, 1.0, 3.0), (5.0, 2.0, 4.0)],
            band_name: "tolerance".into(),
            marks: vec![Mark {
                x: 5.0,
                label: "fail".into(),
                class: "m-fail",
            }],
            spans: vec![
                Span {
                    x0: 0.0,
                    x1: 4.0,
                    class: "sp-hold",
                    label: "step 1: hold".into(),
                },
                Span {
                    x0: 4.0,
                    x1: 8.0,
                    class: "sp-ext",
                    label: "step 1: extended".into(),
                },
            ],
            y_max: None,
        };
        let s = chart(&c);
        assert!(s.contains(r#"<rect class="span sp-hold" x="56.0""#), "{s}");
        assert!(
            s.contains(">hold</text>") && s.contains(">extension</text>"),
            "both in the legend"
        );
        assert!(s.contains(">ms</text>"), "y unit");
        assert!(s.contains("time since the deploy started (s)"), "x unit");
        assert!(s.contains(r#"data-points="4""#) && s.contains(r#"data-points="2""#));
        assert!(s.contains("canary &lt;v2&gt;"), "names are escaped");
        assert!(s.contains(r#"class="band""#) && s.contains(r#"class="mark m-fail""#));
        assert!(s.contains(">decision</text>"));
        assert!(!s.contains("NaN"), "a gap is skipped, not drawn");
        assert!(!s.contains("style="), "no inline styles: the CSP forbids them");
    }

    #[test]
    fn a_sparkline_scales_to_its_maximum_and_a_flat_zero_lies_on_the_floor() {
        let s = sparkline(&[0.0, 5.0, 10.0], "s-base", "req/s");
        assert!(
            s.contains("M0.0,30.0L80.0,16.0L160.0,2.0") && s.contains(r#"data-points="3""#),
            "{s}"
        );
        assert!(sparkline(&[0.0, 0.0], "s-base", "x").contains("M0.0,30.0L160.0,30.0"));
        assert!(sparkline(&[], "s-base", "x").contains(r#"data-points="0""#));
    }

    #[test]
    fn an_empty_chart_still_draws_its_axes() {
        let s = chart(&Chart {
            id: "e".into(),
            unit: "%".into(),
            ..Chart::default()
        });
        assert!(s.contains(r#"class="axis""#) && !s.contains("data-points"));
    }
}
