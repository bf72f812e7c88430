"""Thresholds from normal images only: which normals set them and how.

A site has no defects to tune on, so its threshold comes from the image scores of normal images
the memory did not see (a held-out share, or out-of-fold scores) by a rule aimed at a nominal
false-alarm rate (`rule_threshold`: their empirical quantile, or a generalised Pareto fit to
their upper tail), and the heat maps' floor is the median of those images' anomaly maps.
`synthetic_threshold` and `oracle_recall` measure rules: one from synthetic anomalies, one the
best any threshold could do on a labelled set.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Literal

import numpy as np
from scipy.stats import binomtest

from feddymem.data import Sample

log = logging.getLogger(__name__)

FLOOR_STRIDE = 4
"""The map floor is the median of every FLOOR_STRIDE-th pixel (each way) of the normals' maps:
the maps are smooth (upsampled, blurred), and a sixteenth of them keeps the memory small."""


def split_calibration(
    normals: Sequence[Sample], *, fraction: float, seed: int, minimum: int = 10
) -> tuple[list[Sample], list[Sample]]:
    """Hold out `fraction` of the normals (seeded) for the threshold; none when too few."""
    n = len(normals)
    n_calib = round(n * fraction)
    if n < minimum or n_calib < 1:
        return list(normals), []
    order = np.random.default_rng(seed).permutation(n)
    calib = {int(i) for i in order[:n_calib]}
    return (
        [s for i, s in enumerate(normals) if i not in calib],
        [s for i, s in enumerate(normals) if i in calib],
    )


def quantile_threshold(scores: np.ndarray, *, quantile: float) -> float:
    """The `quantile` of normal images' image scores (N,): the empirical threshold."""
    return float(np.quantile(scores, quantile))


def map_floor(maps: np.ndarray) -> float:
    """The median of normal images' anomaly-map values (any shape): where heat maps start."""
    return float(np.median(maps))


# --- threshold rules: a threshold from normal image scores for a nominal false-alarm rate ----

ThresholdRule = Literal["quantile", "genpareto"]
THRESHOLD_RULES: tuple[str, ...] = ("quantile", "genpareto")
REPORTED_RATES: tuple[float, ...] = (0.01, 0.02, 0.05)
"""The fixed false-alarm rates `evaluate` and the benchmark report besides the model's own."""
TAIL_FRACTION = 0.2
"""The share of the highest normal scores the generalised Pareto tail is fitted to."""
MIN_TAIL = 10
"""Fewer exceedances than this and the tail fit falls back to the empirical quantile."""


def genpareto_threshold(
    scores: np.ndarray, *, false_alarm_rate: float, tail_fraction: float = TAIL_FRACTION
) -> float:
    """Peaks over threshold: a generalised Pareto fit to the normal scores (N,) above their
    (1 - tail_fraction) quantile u, and the score the fitted tail exceeds with probability
    `false_alarm_rate`: u + GPD.ppf(1 - rate / tail share). The tail model extrapolates between
    and beyond the few highest normals instead of snapping to one of them; with fewer than
    MIN_TAIL exceedances, or a rate outside the tail, it is the empirical quantile."""
    from scipy.stats import genpareto

    scores = np.asarray(scores, dtype=np.float64)
    u = float(np.quantile(scores, 1.0 - tail_fraction))
    excess = scores[scores > u] - u
    share = excess.size / scores.size
    if excess.size < MIN_TAIL or not 0.0 < false_alarm_rate < share:
        log.info("tail fit: %d exceedances, empirical quantile instead", excess.size)
        return quantile_threshold(scores, quantile=1.0 - false_alarm_rate)
    shape, _, scale = genpareto.fit(excess, floc=0.0)
    return u + float(genpareto.ppf(1.0 - false_alarm_rate / share, shape, loc=0.0, scale=scale))


def held_out_shift(cross_fitted: np.ndarray, held_out: np.ndarray) -> float:
    """How far scores of normals that played no part in the model (`held_out`) sit above the
    cross-fitted scores of normals whose folds were left out of the memory only
    (`cross_fitted`; a trained generator still saw them): the Hodges-Lehmann estimate, the
    median of every difference held-out minus cross-fitted, or 0 when that is negative or
    either set is empty (the correction may raise a threshold, never lower it)."""
    a, b = np.asarray(held_out, np.float64), np.asarray(cross_fitted, np.float64)
    if a.size == 0 or b.size == 0:
        return 0.0
    return max(0.0, float(np.median(np.subtract.outer(a, b))))


def size_corrected(
    scores: np.ndarray, small_scores: np.ndarray, *, n_bank: float, n_small: float, n_full: float
) -> np.ndarray:
    """Cross-fitted normal scores (N,), each against a bank of `n_bank` other normals, carried
    to a bank of `n_full`: nearest-neighbour distances shrink as a power of the bank's size,
    d ~ n^-b, so each image's own b comes from its score against a smaller bank of `n_small`
    (`small_scores`), and its score becomes `scores * (n_full / n_bank) ** -b`. An image whose
    score did not fall from the small bank to the larger (b <= 0) keeps its score: the
    correction lowers scores, never raises them."""
    big = np.asarray(scores, np.float64)
    small = np.asarray(small_scores, np.float64)
    if big.shape != small.shape:
        raise ValueError(f"scores {big.shape} and small_scores {small.shape} differ in shape")
    if not 0 < n_small < n_bank <= n_full:
        raise ValueError(f"bank sizes must grow: {n_small}, {n_bank}, {n_full}")
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where((big > 0) & (small > 0), big / small, 1.0)
    exponent = -np.log(np.minimum(ratio, 1.0)) / np.log(n_bank / n_small)  # b >= 0
    return big * (n_full / n_bank) ** -exponent


def rule_threshold(scores: np.ndarray, *, rule: str, false_alarm_rate: float) -> float:
    """The threshold `rule` sets on normal image scores (N,) for `false_alarm_rate`."""
    if rule == "quantile":
        return quantile_threshold(scores, quantile=1.0 - false_alarm_rate)
    if rule == "genpareto":
        return genpareto_threshold(scores, false_alarm_rate=false_alarm_rate)
    raise ValueError(f"unknown threshold rule {rule!r}; known: {', '.join(THRESHOLD_RULES)}")


def synthetic_threshold(normal_scores: np.ndarray, anomaly_scores: np.ndarray) -> float:
    """The threshold that best separates held-out normals (N,) from synthetic anomalies made
    from them (M,): the largest recall minus false-alarm rate (Youden's J), the threshold
    halfway between the two scores it falls between."""
    normal = np.asarray(normal_scores, dtype=np.float64)
    anomaly = np.asarray(anomaly_scores, dtype=np.float64)
    candidates = np.unique(np.concatenate([normal, anomaly]))
    mids = np.concatenate([candidates[:1] - 1.0, (candidates[1:] + candidates[:-1]) / 2])
    flagged_anomaly = (anomaly[None, :] > mids[:, None]).mean(axis=1)
    flagged_normal = (normal[None, :] > mids[:, None]).mean(axis=1)
    return float(mids[int(np.argmax(flagged_anomaly - flagged_normal))])


def oracle_recall(labels: np.ndarray, scores: np.ndarray, *, threshold: float) -> float:
    """The best recall any threshold reaches on a labelled set (labels (N,) 0/1, scores (N,))
    without raising more false alarms than `threshold` does: the lowest threshold that flags
    no more normals, i.e. at the next normal score below the flagged ones."""
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    normal = np.sort(scores[~labels])[::-1]
    k = int((normal > threshold).sum())
    best = normal[k] if k < normal.size else -np.inf
    return float((scores[labels] > best).mean()) if labels.any() else float("nan")


def false_alarm_interval(
    false_alarms: int, normals: int, *, level: float = 0.95
) -> tuple[float, float]:
    """The exact (Clopper-Pearson) `level` interval of a false-alarm rate observed as
    `false_alarms` of `normals` test normals (scipy.stats.binomtest).

    Test sets hold tens to hundreds of normals, so an observed rate is itself uncertain: at a
    true 2% rate, 70 normals give 0, 1, 2 or 3 false alarms with probabilities 0.24, 0.35,
    0.24, 0.11. The interval says which true rates the observation is consistent with.
    """
    if normals < 1 or not 0 <= false_alarms <= normals:
        raise ValueError(f"{false_alarms} false alarms of {normals} normals")
    ci = binomtest(false_alarms, normals).proportion_ci(confidence_level=level, method="exact")
    return float(ci.low), float(ci.high)
