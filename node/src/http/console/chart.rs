//! The lift chart of an experiment's results: one row per treatment arm, its interval as a bar
//! and its estimate as a dot, around a zero line, as inline SVG in the page. No script (the CSP
//! forbids it) and no `style` attribute (the CSP forbids inline CSS): presentation attributes
//! only. Arm names are escaped like every other text.

use std::fmt::Write;

use super::html::escape;

/// One arm's lift and its interval, in the unit the chart is labelled with.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub arm: String,
    pub estimate: f64,
    pub lower: f64,
    pub upper: f64,
}

const WIDTH: f64 = 520.0;
const LABEL: f64 = 140.0;
const ROW: f64 = 30.0;
const TOP: f64 = 10.0;
const AXIS: f64 = 26.0;

/// `value` with `unit` (`%` multiplies by 100), as the axis and the labels print it.
fn number(value: f64, percent: bool) -> String {
    if percent {
        format!("{:+.1}%", value * 100.0)
    } else {
        format!("{value:+.3}")
    }
}

/// The chart of `rows` titled `title` (both escaped); `percent` labels values as percentages.
/// Rows with a non-finite figure are left out; with none left, the chart says so.
pub fn lift(title: &str, rows: &[Row], percent: bool) -> String {
    let rows: Vec<&Row> = rows
        .iter()
        .filter(|r| r.estimate.is_finite() && r.lower.is_finite() && r.upper.is_finite())
        .collect();
    if rows.is_empty() {
        return format!(
            "<p class=\"help\">{}: no interval to draw yet.</p>",
            escape(title)
        );
    }
    let extent = rows
        .iter()
        .flat_map(|r| [r.lower.abs(), r.upper.abs(), r.estimate.abs()])
        .fold(f64::MIN_POSITIVE, f64::max)
        * 1.1;
    let plot = WIDTH - LABEL - 20.0;
    let zero = LABEL + plot / 2.0;
    let x = |v: f64| zero + v / extent * (plot / 2.0);
    let height = TOP + ROW * rows.len() as f64 + AXIS;
    let mut svg = format!(
        "<svg class=\"chart\" role=\"img\" viewBox=\"0 0 {WIDTH} {height}\" width=\"{WIDTH}\" \
         height=\"{height}\" aria-label=\"{label}\" xmlns=\"http://www.w3.org/2000/svg\">\
         <title>{label}</title>\
         <line x1=\"{zero}\" y1=\"{TOP}\" x2=\"{zero}\" y2=\"{axis}\" stroke=\"#8a93a6\" \
         stroke-dasharray=\"3 3\"/>\
         <line x1=\"{LABEL}\" y1=\"{axis}\" x2=\"{right}\" y2=\"{axis}\" stroke=\"#8a93a6\"/>",
        label = escape(title),
        axis = TOP + ROW * rows.len() as f64,
        right = LABEL + plot,
    );
    for (i, row) in rows.iter().enumerate() {
        let y = TOP + ROW * i as f64 + ROW / 2.0;
        let colour = if row.lower > 0.0 {
            "#2b8a3e"
        } else if row.upper < 0.0 {
            "#c92a2a"
        } else {
            "#2f6fdf"
        };
        let _ = write!(
            svg,
            "<text x=\"{tx}\" y=\"{ty}\" text-anchor=\"end\" font-size=\"12\">{arm}</text>\
             <line x1=\"{x1:.1}\" y1=\"{y}\" x2=\"{x2:.1}\" y2=\"{y}\" stroke=\"{colour}\" \
             stroke-width=\"6\" stroke-linecap=\"round\"><title>{arm}: {lo} to {hi}</title></line>\
             <circle cx=\"{cx:.1}\" cy=\"{y}\" r=\"5\" fill=\"#1d2330\"><title>{arm}: {est}</title>\
             </circle>",
            tx = LABEL - 8.0,
            ty = y + 4.0,
            arm = escape(&row.arm),
            x1 = x(row.lower),
            x2 = x(row.upper),
            cx = x(row.estimate),
            lo = number(row.lower, percent),
            hi = number(row.upper, percent),
            est = number(row.estimate, percent),
        );
    }
    let axis_y = TOP + ROW * rows.len() as f64 + 16.0;
    let _ = write!(
        svg,
        "<text x=\"{LABEL}\" y=\"{axis_y}\" font-size=\"11\">{min}</text>\
         <text x=\"{zero}\" y=\"{axis_y}\" font-size=\"11\" text-anchor=\"middle\">0</text>\
         <text x=\"{right}\" y=\"{axis_y}\" font-size=\"11\" text-anchor=\"end\">{max}</text></svg>",
        min = number(-extent, percent),
        max = number(extent, percent),
        right = LABEL + plot,
    );
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(arm: &str, estimate: f64, lower: f64, upper: f64) -> Row {
        Row {
            arm: arm.into(),
            estimate,
            lower,
            upper,
        }
    }

    #[test]
    fn the_chart_escapes_arms_and_places_intervals_around_zero() {
        let svg = lift(
            "<b>lift</b>",
            &[
                row("<script>x</script>", 0.1, 0.05, 0.15),
                row("b", -0.1, -0.2, f64::NAN),
            ],
            true,
        );
        assert!(!svg.contains("<script>") && !svg.contains("<b>"), "{svg}");
        assert!(svg.contains("&lt;script&gt;"), "{svg}");
        assert!(
            !svg.contains("style="),
            "the CSP forbids inline styles: {svg}"
        );
        // One row: the NaN one is left out; wholly above zero, it is drawn green, right of zero.
        assert_eq!(svg.matches("<circle").count(), 1, "{svg}");
        assert!(svg.contains("#2b8a3e"), "{svg}");
        assert!(svg.contains("+10.0%"), "{svg}");
        let nothing = lift("t", &[row("b", f64::NAN, 0.0, 1.0)], false);
        assert!(!nothing.contains("<svg"), "{nothing}");
    }
}
