"""GrowthBook's gbstats 0.8.0 as an oracle for stats/tests/oracle.rs.

Reads a JSON list of cases on standard input and writes, for each, what gbstats computes for it
(or its error message) on standard output, as JSON. A case names two arms (a proportion as
{"n", "sum"}, a mean as {"n", "sum", "sum_squares"}), the lift ("relative" or "absolute"), alpha,
the sequential tuning and an optional proper prior {"mean", "variance"} on the relative lift.
"""

import json
import math
import sys

from gbstats.bayesian.tests import EffectBayesianABTest, EffectBayesianConfig, GaussianPrior
from gbstats.frequentist.tests import (
    FrequentistConfig,
    OneSidedTreatmentGreaterTTest,
    SequentialConfig,
    SequentialTwoSidedTTest,
    TwoSidedTTest,
)
from gbstats.models.statistics import ProportionStatistic, SampleMeanStatistic


def statistic(arm):
    if "sum_squares" in arm:
        return SampleMeanStatistic(n=arm["n"], sum=arm["sum"], sum_squares=arm["sum_squares"])
    return ProportionStatistic(n=arm["n"], sum=arm["sum"])


def frequentist(result):
    if result.error_message:
        return {"error": result.error_message}
    # A one-sided interval's open end is infinite, which JSON cannot carry: null.
    ci = [float(x) if math.isfinite(x) else None for x in result.ci]
    return {"p_value": float(result.p_value), "ci": ci}


def bayesian(result):
    if result.error_message:
        return {"error": result.error_message}
    return {
        "mean": float(result.expected),
        "sd": float(result.uplift.stddev),
        "chance_to_win": float(result.chance_to_win),
        "ci": [float(x) for x in result.ci],
        "risk": [float(x) for x in result.risk],
    }


def run(case):
    a, b = statistic(case["control"]), statistic(case["treatment"])
    kind = case["lift"]
    alpha = case["alpha"]
    frequentist_config = FrequentistConfig(alpha=alpha, difference_type=kind)
    sequential_config = SequentialConfig(
        alpha=alpha,
        difference_type=kind,
        sequential_tuning_parameter=case["tuning"],
    )
    prior = case.get("prior")
    bayesian_config = EffectBayesianConfig(
        alpha=alpha,
        difference_type=kind,
        prior_type="relative",
        prior_effect=GaussianPrior(
            mean=prior["mean"] if prior else 0,
            variance=prior["variance"] if prior else 1,
            proper=prior is not None,
        ),
    )
    return {
        "two_sided": frequentist(TwoSidedTTest(a, b, frequentist_config).compute_result()),
        "one_sided": frequentist(
            OneSidedTreatmentGreaterTTest(a, b, frequentist_config).compute_result()
        ),
        "sequential": frequentist(
            SequentialTwoSidedTTest(a, b, sequential_config).compute_result()
        ),
        "bayesian": bayesian(EffectBayesianABTest(a, b, bayesian_config).compute_result()),
    }


json.dump([run(case) for case in json.load(sys.stdin)], sys.stdout)
