//! An experiment's analysis settings between the wire (`bunting.v1.AnalysisSettings`), the model
//! (`bunting_experiments::AnalysisSettings`) and the statistics (`bunting_stats::AnalysisSettings`).

use bunting_experiments::{AnalysisRequest, AnalysisSettings, Engine, Prior, TestSides};
use bunting_proto::bunting::v1 as pb;
use bunting_stats::{Alpha, DecisionRule, GaussianPrior, SequentialTuning, Sides};
use tonic::Status;

use super::admin_status::bad_field;

/// A CreateExperimentRequest's `analysis`, checked; unset means every default. A refusal is
/// INVALID_ARGUMENT naming the field (`analysis.alpha`, `analysis.prior.variance`, ...).
pub fn from_request(request: Option<pb::AnalysisSettings>) -> Result<AnalysisSettings, Status> {
    let Some(request) = request else {
        return Ok(AnalysisSettings::default());
    };
    let sides = match pb::TestSides::try_from(request.sides) {
        Ok(pb::TestSides::Unspecified | pb::TestSides::TwoSided) => TestSides::TwoSided,
        Ok(pb::TestSides::OneSided) => TestSides::OneSided,
        Err(_) => {
            return Err(bad_field(
                "analysis.sides",
                format!("{} is not a TestSides value", request.sides),
            ));
        }
    };
    let engine = match pb::AnalysisEngine::try_from(request.engine) {
        Ok(pb::AnalysisEngine::Unspecified | pb::AnalysisEngine::Frequentist) => {
            Engine::Frequentist
        }
        Ok(pb::AnalysisEngine::Bayesian) => Engine::Bayesian,
        Err(_) => {
            return Err(bad_field(
                "analysis.engine",
                format!("{} is not an AnalysisEngine value", request.engine),
            ));
        }
    };
    AnalysisSettings::new(AnalysisRequest {
        alpha: request.alpha,
        sides,
        sequential: request.sequential,
        sequential_tuning: request.sequential_tuning,
        engine,
        prior: request.prior.map(|p| Prior {
            mean: p.mean,
            variance: p.variance,
        }),
    })
    .map_err(|e| bad_field(&format!("analysis.{}", e.field()), e.to_string()))
}

/// The settings in force, every field set.
pub fn to_proto(settings: &AnalysisSettings) -> pb::AnalysisSettings {
    pb::AnalysisSettings {
        alpha: Some(settings.alpha()),
        sides: match settings.sides() {
            TestSides::TwoSided => pb::TestSides::TwoSided,
            TestSides::OneSided => pb::TestSides::OneSided,
        }
        .into(),
        sequential: Some(settings.sequential().is_some()),
        sequential_tuning: settings.sequential(),
        engine: match settings.engine() {
            Engine::Frequentist => pb::AnalysisEngine::Frequentist,
            Engine::Bayesian => pb::AnalysisEngine::Bayesian,
        }
        .into(),
        prior: settings.prior().map(|p| pb::GaussianPrior {
            mean: p.mean,
            variance: p.variance,
        }),
    }
}

/// The statistics' form. The model checked every value against the same bounds the statistics
/// enforce, so the fallbacks below are unreachable; if a bound ever drifted, results would be
/// computed under the defaults rather than fail, and `decision_rule` would say so.
pub fn for_stats(settings: &AnalysisSettings) -> bunting_stats::AnalysisSettings {
    let alpha = Alpha::new(settings.alpha()).unwrap_or_default();
    let rule = match (settings.engine(), settings.sequential(), settings.sides()) {
        (Engine::Bayesian, _, _) => DecisionRule::Bayesian(
            settings
                .prior()
                .and_then(|p| GaussianPrior::new(p.mean, p.variance).ok()),
        ),
        (Engine::Frequentist, Some(tuning), _) => {
            DecisionRule::Sequential(SequentialTuning::new(tuning).unwrap_or_default())
        }
        (Engine::Frequentist, None, TestSides::TwoSided) => DecisionRule::FixedHorizon(Sides::Two),
        (Engine::Frequentist, None, TestSides::OneSided) => {
            DecisionRule::FixedHorizon(Sides::OneSided)
        }
    };
    bunting_stats::AnalysisSettings { alpha, rule }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn requests_are_checked_and_named_by_field() {
        let refused = |request: pb::AnalysisSettings| from_request(Some(request)).unwrap_err();
        let cases = [
            (
                pb::AnalysisSettings {
                    alpha: Some(0.7),
                    ..Default::default()
                },
                "analysis.alpha",
            ),
            (
                pb::AnalysisSettings {
                    engine: pb::AnalysisEngine::Bayesian.into(),
                    prior: Some(pb::GaussianPrior {
                        mean: 0.0,
                        variance: 0.0,
                    }),
                    ..Default::default()
                },
                "analysis.prior.variance",
            ),
            (
                pb::AnalysisSettings {
                    sides: 9,
                    ..Default::default()
                },
                "analysis.sides",
            ),
            (
                pb::AnalysisSettings {
                    sides: pb::TestSides::OneSided.into(),
                    sequential: Some(true),
                    ..Default::default()
                },
                "analysis.sequential",
            ),
        ];
        for (request, field) in cases {
            let status = refused(request);
            assert_eq!(status.code(), Code::InvalidArgument);
            assert!(status.message().starts_with(field), "{}", status.message());
        }
        assert_eq!(from_request(None).unwrap(), AnalysisSettings::default());
    }

    #[test]
    fn settings_round_trip_and_become_the_rule() {
        let bayesian = from_request(Some(pb::AnalysisSettings {
            alpha: Some(0.1),
            engine: pb::AnalysisEngine::Bayesian.into(),
            prior: Some(pb::GaussianPrior {
                mean: 0.0,
                variance: 0.09,
            }),
            ..Default::default()
        }))
        .unwrap();
        assert_eq!(
            from_request(Some(to_proto(&bayesian))).unwrap(),
            bayesian,
            "the settings in force read back as themselves"
        );
        let stats = for_stats(&bayesian);
        assert_eq!(stats.alpha.get(), 0.1);
        assert_eq!(
            stats.rule,
            DecisionRule::Bayesian(Some(GaussianPrior::GROWTHBOOK))
        );
        let one_sided = from_request(Some(pb::AnalysisSettings {
            sides: pb::TestSides::OneSided.into(),
            ..Default::default()
        }))
        .unwrap();
        assert_eq!(
            for_stats(&one_sided).rule,
            DecisionRule::FixedHorizon(Sides::OneSided)
        );
        assert_eq!(
            for_stats(&AnalysisSettings::default()).rule,
            DecisionRule::Sequential(SequentialTuning::DEFAULT)
        );
    }
}
