//! Which figure a verdict rests on, and the verdict.
//!
//! Every comparison reports Welch's fixed-horizon test and the Gaussian posterior; the rule says
//! which of them (or the always-valid sequence) decides. One rule per experiment, chosen before
//! it starts: choosing the rule after looking at the figures would be choosing the answer.

use std::fmt;

use crate::alpha::Alpha;
use crate::bayesian::GaussianPrior;
use crate::sequential::SequentialTuning;

/// What a frequentist test's alternative is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Sides {
    /// "The lift is not zero": significant in either direction.
    #[default]
    Two,
    /// "Treatment is greater than control" (gbstats' `OneSidedTreatmentGreaterTTest`): all of
    /// alpha in the upper tail, so a gain is found with fewer users, and a loss is never
    /// significant.
    OneSided,
}

/// How the verdict is reached.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DecisionRule {
    /// Welch's t-test at the planned sample size; valid only if the results are judged once.
    FixedHorizon(Sides),
    /// The always-valid confidence sequence (two-sided, as GrowthBook's): valid at every look.
    Sequential(SequentialTuning),
    /// The Gaussian posterior: treatment is better when its chance to beat control is at least
    /// `1 - alpha`, worse when at most `alpha` (GrowthBook's 95% "chance to win" threshold at the
    /// default alpha). `None`: a flat prior.
    Bayesian(Option<GaussianPrior>),
}

impl Default for DecisionRule {
    fn default() -> Self {
        DecisionRule::FixedHorizon(Sides::Two)
    }
}

impl DecisionRule {
    /// The sequential tuning, when the rule is sequential.
    pub fn sequential(&self) -> Option<SequentialTuning> {
        match self {
            DecisionRule::Sequential(tuning) => Some(*tuning),
            _ => None,
        }
    }

    /// The sides of the frequentist test decisions rest on; `None` for the Bayesian rule.
    pub fn sides(&self) -> Option<Sides> {
        match self {
            DecisionRule::FixedHorizon(sides) => Some(*sides),
            DecisionRule::Sequential(_) => Some(Sides::Two),
            DecisionRule::Bayesian(_) => None,
        }
    }

    /// The prior of the Bayesian rule; `None` otherwise, and for a flat prior.
    pub fn prior(&self) -> Option<GaussianPrior> {
        match self {
            DecisionRule::Bayesian(prior) => *prior,
            _ => None,
        }
    }

    /// The rule in words, with its level: what results print beside a verdict.
    pub fn describe(&self, alpha: Alpha) -> String {
        let a = alpha.get();
        match self {
            DecisionRule::FixedHorizon(Sides::Two) => {
                format!("frequentist, fixed horizon, two-sided Welch t-test, alpha {a}")
            }
            DecisionRule::FixedHorizon(Sides::OneSided) => format!(
                "frequentist, fixed horizon, one-sided Welch t-test (treatment greater), alpha {a}"
            ),
            DecisionRule::Sequential(tuning) => format!(
                "frequentist, sequential (always valid, tuning {}), two-sided, alpha {a}",
                tuning.get()
            ),
            DecisionRule::Bayesian(None) => format!(
                "Bayesian, flat prior, chance to beat control at least {} or at most {a}",
                1.0 - a
            ),
            DecisionRule::Bayesian(Some(prior)) => format!(
                "Bayesian, Gaussian prior on the relative lift (mean {}, variance {}), chance to \
                 beat control at least {} or at most {a}",
                prior.mean(),
                prior.variance(),
                1.0 - a
            ),
        }
    }
}

/// What a comparison concludes under its [`DecisionRule`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// Treatment's metric is higher.
    Higher,
    /// Treatment's metric is lower.
    Lower,
    /// Neither: the data do not tell the arms apart (yet).
    Inconclusive,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Higher => "higher",
            Verdict::Lower => "lower",
            Verdict::Inconclusive => "inconclusive",
        })
    }
}
