//! Multiple-testing correction across the metrics of an experiment.

use crate::error::StatsError;

/// How p-values of several tests are adjusted so that a significance threshold keeps its meaning
/// across all of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Correction {
    /// Holm's step-down Bonferroni: controls the family-wise error rate (the chance of any false
    /// positive).
    HolmBonferroni,
    /// Benjamini–Hochberg: controls the false discovery rate (the expected share of false
    /// positives among the significant results); less conservative.
    BenjaminiHochberg,
}

impl Correction {
    /// Adjusted p-values, in the order of `p_values`.
    pub fn adjust(self, p_values: &[f64]) -> Result<Vec<f64>, StatsError> {
        match self {
            Correction::HolmBonferroni => holm_bonferroni(p_values),
            Correction::BenjaminiHochberg => benjamini_hochberg(p_values),
        }
    }
}

/// Holm–Bonferroni adjusted p-values, in input order. With the p-values sorted ascending,
/// `p̃₍ᵢ₎ = min(1, max over j <= i of (m - j + 1) · p₍ⱼ₎)` (i, j from 1).
///
/// Every value must be in `[0, 1]`; an empty slice gives an empty vector.
pub fn holm_bonferroni(p_values: &[f64]) -> Result<Vec<f64>, StatsError> {
    let order = ascending(p_values)?;
    let m = p_values.len() as f64;
    let mut adjusted = vec![0.0; p_values.len()];
    let mut running_max: f64 = 0.0;
    for (rank, &index) in order.iter().enumerate() {
        let scaled = ((m - rank as f64) * p_values[index]).min(1.0);
        running_max = running_max.max(scaled);
        adjusted[index] = running_max;
    }
    Ok(adjusted)
}

/// Benjamini–Hochberg adjusted p-values, in input order. With the p-values sorted ascending,
/// `p̃₍ᵢ₎ = min(1, min over j >= i of m · p₍ⱼ₎ / j)` (i, j from 1).
///
/// Every value must be in `[0, 1]`; an empty slice gives an empty vector.
pub fn benjamini_hochberg(p_values: &[f64]) -> Result<Vec<f64>, StatsError> {
    let order = ascending(p_values)?;
    let m = p_values.len() as f64;
    let mut adjusted = vec![0.0; p_values.len()];
    let mut running_min: f64 = 1.0;
    for (rank, &index) in order.iter().enumerate().rev() {
        // p · (m / rank), not m · p / rank: the factor is at least 1 (exactly 1 at the largest
        // p-value), so rounding cannot take an adjusted value below its raw one.
        let scaled = p_values[index] * (m / (rank as f64 + 1.0));
        running_min = running_min.min(scaled);
        adjusted[index] = running_min;
    }
    Ok(adjusted)
}

/// Indices of `p_values` in ascending order of value (ties keep input order), after checking
/// every value.
fn ascending(p_values: &[f64]) -> Result<Vec<usize>, StatsError> {
    if let Some((index, &value)) = p_values
        .iter()
        .enumerate()
        .find(|(_, p)| !(0.0..=1.0).contains(*p))
    {
        return Err(StatsError::InvalidPValue { index, value });
    }
    let mut order: Vec<usize> = (0..p_values.len()).collect();
    order.sort_by(|&a, &b| p_values[a].total_cmp(&p_values[b]));
    Ok(order)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_values_that_are_not_probabilities() {
        for correction in [Correction::HolmBonferroni, Correction::BenjaminiHochberg] {
            assert_eq!(
                correction.adjust(&[0.1, 1.5]),
                Err(StatsError::InvalidPValue {
                    index: 1,
                    value: 1.5
                })
            );
            assert!(matches!(
                correction.adjust(&[f64::NAN]),
                Err(StatsError::InvalidPValue { index: 0, .. })
            ));
            assert_eq!(correction.adjust(&[]), Ok(vec![]));
            assert_eq!(correction.adjust(&[0.03]), Ok(vec![0.03]));
        }
    }
}
