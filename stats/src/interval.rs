//! A closed interval with finite, ordered bounds.

/// `[lower, upper]`, both finite, `lower <= upper`. Only this crate builds them, so a renderer
/// never meets a `NaN` bound or a reversed pair.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Interval {
    lower: f64,
    upper: f64,
}

impl Interval {
    pub(crate) fn new(lower: f64, upper: f64) -> Option<Self> {
        (lower.is_finite() && upper.is_finite() && lower <= upper)
            .then_some(Interval { lower, upper })
    }

    /// `centre ± half_width`.
    pub(crate) fn around(centre: f64, half_width: f64) -> Option<Self> {
        if half_width < 0.0 {
            return None;
        }
        Interval::new(centre - half_width, centre + half_width)
    }

    pub fn lower(&self) -> f64 {
        self.lower
    }

    pub fn upper(&self) -> f64 {
        self.upper
    }

    pub fn width(&self) -> f64 {
        self.upper - self.lower
    }

    pub fn contains(&self, x: f64) -> bool {
        self.lower <= x && x <= self.upper
    }
}
