//! The significance level, checked once so no function has to re-check it.

use crate::error::StatsError;

/// A significance level strictly between 0 and 1 (intervals are at confidence `1 - alpha`,
/// two-sided).
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct Alpha(f64);

impl Alpha {
    /// The usual 0.05 (95% intervals).
    pub const FIVE_PERCENT: Alpha = Alpha(0.05);

    /// Refuses anything outside `(0, 1)`, `NaN` included.
    pub fn new(value: f64) -> Result<Self, StatsError> {
        if value > 0.0 && value < 1.0 {
            Ok(Alpha(value))
        } else {
            Err(StatsError::InvalidAlpha { value })
        }
    }

    pub fn get(self) -> f64 {
        self.0
    }

    /// `1 - alpha`, e.g. 0.95.
    pub fn confidence_level(self) -> f64 {
        1.0 - self.0
    }

    /// The tail beyond each end of a two-sided interval: `alpha / 2`.
    pub(crate) fn half(self) -> f64 {
        self.0 / 2.0
    }
}

impl Default for Alpha {
    fn default() -> Self {
        Alpha::FIVE_PERCENT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_values_outside_the_open_unit_interval() {
        for value in [0.0, 1.0, -0.1, 1.5, f64::NAN, f64::INFINITY] {
            assert!(Alpha::new(value).is_err(), "{value}");
        }
        assert_eq!(Alpha::new(0.1).map(Alpha::get), Ok(0.1));
    }
}
