"""Threshold rules over normal image scores: pure functions, checked on known distributions."""

from __future__ import annotations

import numpy as np
import pytest

from feddymem.detect.threshold import (
    false_alarm_interval,
    genpareto_threshold,
    held_out_shift,
    oracle_recall,
    rule_threshold,
    size_corrected,
    synthetic_threshold,
)


def test_genpareto_threshold_tracks_the_true_quantile_of_an_exponential_tail() -> None:
    # 300 normals from an exponential: its 0.98 quantile is ln(50) = 3.91. The tail fit's
    # threshold lands near it, and flags about 2% of a large fresh sample.
    rng = np.random.default_rng(0)
    scores = rng.exponential(size=300)
    t = genpareto_threshold(scores, false_alarm_rate=0.02)
    assert abs(t - np.log(50)) < 0.6
    fresh = rng.exponential(size=200_000)
    assert 0.01 < (fresh > t).mean() < 0.035


def test_genpareto_threshold_falls_back_to_the_quantile_on_few_scores() -> None:
    scores = np.arange(20, dtype=float)  # top fifth = 4 exceedances < MIN_TAIL
    assert genpareto_threshold(scores, false_alarm_rate=0.1) == pytest.approx(
        np.quantile(scores, 0.9)
    )


def test_rule_threshold_dispatches_and_refuses_unknown_rules() -> None:
    scores = np.linspace(0.0, 1.0, 101)
    assert rule_threshold(scores, rule="quantile", false_alarm_rate=0.02) == pytest.approx(0.98)
    with pytest.raises(ValueError, match="unknown threshold rule"):
        rule_threshold(scores, rule="nope", false_alarm_rate=0.02)


def test_synthetic_threshold_separates_the_two_groups() -> None:
    normal = np.array([0.1, 0.2, 0.3, 0.4])
    anomaly = np.array([0.25, 0.6, 0.7, 0.8])
    # above 0.45 every anomaly but one and no normal: J = 0.75, the best
    assert synthetic_threshold(normal, anomaly) == pytest.approx(0.5)


def test_oracle_recall_counts_the_anomalies_above_the_next_normal_down() -> None:
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    scores = np.array([0.1, 0.2, 0.5, 0.9, 0.3, 0.6, 0.7, 1.0])
    # a threshold at 0.8 flags one normal (0.9); the oracle with one false alarm sits just
    # above 0.5 and catches 0.6, 0.7, 1.0
    assert oracle_recall(labels, scores, threshold=0.8) == pytest.approx(0.75)
    # no false alarm at 0.95: the oracle sits at 0.9 and catches 1.0 only
    assert oracle_recall(labels, scores, threshold=0.95) == pytest.approx(0.25)


def test_false_alarm_interval_is_the_exact_binomial_interval() -> None:
    # none of 70: the upper end solves (1 - p)^70 = 0.025
    low, high = false_alarm_interval(0, 70)
    assert low == 0.0 and high == pytest.approx(1 - 0.025 ** (1 / 70), rel=1e-6)
    # 6 of 176 (3.4%) is consistent with a true 2%; 20 of 176 (11.4%) is not
    low, high = false_alarm_interval(6, 176)
    assert low < 0.02 < high
    assert false_alarm_interval(20, 176)[0] > 0.02
    # more normals, a narrower interval around the same rate
    wide, narrow = false_alarm_interval(2, 100), false_alarm_interval(20, 1000)
    assert narrow[1] - narrow[0] < wide[1] - wide[0]
    with pytest.raises(ValueError, match="false alarms"):
        false_alarm_interval(5, 4)


def test_held_out_shift_estimates_how_far_held_out_normals_sit_above_cross_fitted_ones() -> None:
    rng = np.random.default_rng(0)
    crossed = rng.normal(10.0, 1.0, 400)
    held = rng.normal(10.5, 1.0, 60)
    assert abs(held_out_shift(crossed, held) - 0.5) < 0.3
    # never lowers a threshold: held-out normals below the cross-fitted ones give 0
    assert held_out_shift(crossed, held - 2.0) == 0.0
    assert held_out_shift(crossed, np.zeros(0)) == 0.0
    assert held_out_shift(np.zeros(0), held) == 0.0
    # one exact difference everywhere: the estimate is it
    assert held_out_shift(np.array([1.0, 2.0, 3.0]), np.array([1.25, 2.25, 3.25])) == 0.25


def test_size_corrected_carries_nearest_neighbour_scores_along_their_power_law() -> None:
    # d ~ n^-1/4: scores 2 against 100 items and 2 * 2^-1/4 against 200 give 2 * 4^-1/4 at 400
    small, big = np.array([2.0, 3.0]), np.array([2.0 * 2**-0.25, 3.0])
    out = size_corrected(big, small, n_bank=200, n_small=100, n_full=400)
    assert out[0] == pytest.approx(2.0 * 4**-0.25)
    assert out[1] == 3.0  # no fall from the small bank to the larger: kept, never raised
    rises = size_corrected(np.array([3.0]), np.array([2.0]), n_bank=2, n_small=1, n_full=3)
    assert rises[0] == 3.0
    with pytest.raises(ValueError, match="bank sizes must grow"):
        size_corrected(big, small, n_bank=100, n_small=200, n_full=400)
    with pytest.raises(ValueError, match="differ in shape"):
        size_corrected(big, small[:1], n_bank=200, n_small=100, n_full=400)
