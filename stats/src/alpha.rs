//! The significance level, checked once so no function has to re-check it.

use crate::error::StatsError;

/// A significance level in `(0, 0.5]` (intervals are at confidence `1 - alpha`). Above one half
/// a one-sided bound would lie on the wrong side of its own estimate, and no experiment is
/// judged at a level that lax.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct Alpha(f64);

impl Alpha {
    /// The usual 0.05 (95% intervals).
    pub const FIVE_PERCENT: Alpha = Alpha(0.05);

    /// The largest level accepted.
    pub const MAX: f64 = 0.5;

    /// Refuses anything outside `(0, 0.5]`, `NaN` included.
    pub fn new(value: f64) -> Result<Self, StatsError> {
        if value > 0.0 && value <= Alpha::MAX {
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
    fn refuses_values_outside_zero_to_one_half() {
        for value in [0.0, 0.5000001, 0.9, 1.0, -0.1, 1.5, f64::NAN, f64::INFINITY] {
            assert!(Alpha::new(value).is_err(), "{value}");
        }
        assert_eq!(Alpha::new(0.1).map(Alpha::get), Ok(0.1));
        assert_eq!(Alpha::new(0.5).map(Alpha::get), Ok(0.5));
    }
}
