"""Binary classification metrics for both classes, with bootstrap confidence intervals.

The network's score is the probability of disease control (label 1). The paper's
four metrics keep disease control as their positive class (AUC, accuracy,
precision, recall); the metrics a clinician acts on take progressive disease
(label 0) as the positive class: sensitivity, specificity, PPV, NPV and PR-AUC.
AUC, balanced accuracy and the Brier score are the same either way round;
calibration slope and intercept are of the probability of disease control.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

PROGRESSION = 0
"""The label of progressive disease, the class the actionable metrics count as positive."""


def _ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing their average rank."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return ((ends - counts + 1 + ends) / 2.0)[inverse]


def roc_auc(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """Area under the ROC curve via the rank statistic (ties count half)."""
    y_true = np.asarray(y_true).astype(bool)
    y_score = np.asarray(y_score, dtype=np.float64)
    positives, negatives = int(y_true.sum()), int((~y_true).sum())
    if positives == 0 or negatives == 0:
        return float("nan")
    ranks = _ranks(y_score)
    return float((ranks[y_true].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def roc_curve(y_true: np.ndarray, y_score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False and true positive rates at every distinct threshold, from (0, 0) to (1, 1)."""
    y_true = np.asarray(y_true).astype(bool)
    y_score = np.asarray(y_score, dtype=np.float64)
    thresholds = np.unique(y_score)[::-1]
    positives, negatives = max(int(y_true.sum()), 1), max(int((~y_true).sum()), 1)
    fpr, tpr = [0.0], [0.0]
    for threshold in thresholds:
        predicted = y_score >= threshold
        tpr.append(float((predicted & y_true).sum() / positives))
        fpr.append(float((predicted & ~y_true).sum() / negatives))
    return np.asarray(fpr), np.asarray(tpr)


def average_precision(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """Area under the precision-recall curve as the step sum over distinct thresholds."""
    y_true = np.asarray(y_true).astype(bool)
    y_score = np.asarray(y_score, dtype=np.float64)
    positives = int(y_true.sum())
    if positives == 0:
        return float("nan")
    total, previous_recall = 0.0, 0.0
    for threshold in np.unique(y_score)[::-1]:
        predicted = y_score >= threshold
        hits = int((predicted & y_true).sum())
        recall = hits / positives
        total += (recall - previous_recall) * hits / int(predicted.sum())
        previous_recall = recall
    return total


def brier_score(y_true: np.ndarray, probability: np.ndarray) -> float:
    y_true = np.asarray(y_true, dtype=np.float64)
    return (
        float(np.mean((np.asarray(probability, dtype=np.float64) - y_true) ** 2)) if len(y_true) else math.nan
    )


def _logit(probability: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(probability, dtype=np.float64), 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def _logistic_fit(y: np.ndarray, design: np.ndarray, offset: np.ndarray) -> np.ndarray | None:
    """Maximum-likelihood coefficients by Newton's method; None when they diverge (separation)."""
    beta = np.zeros(design.shape[1])
    for _ in range(100):
        p = 1.0 / (1.0 + np.exp(-np.clip(design @ beta + offset, -50, 50)))
        gradient = design.T @ (y - p)
        hessian = design.T @ (design * (p * (1 - p))[:, None])
        try:
            step = np.linalg.solve(hessian + 1e-12 * np.eye(len(beta)), gradient)
        except np.linalg.LinAlgError:
            return None
        beta = beta + step
        if np.max(np.abs(step)) < 1e-10:
            return beta if np.all(np.abs(beta) < 1e3) else None
    return None


def calibration_slope_intercept(y_true: np.ndarray, probability: np.ndarray) -> tuple[float, float]:
    """Slope of ``logit P(y) = a + b * logit(p)``, and the intercept with the slope fixed at 1.

    A perfectly calibrated model has slope 1 and intercept 0; a slope below 1 means
    overconfident probabilities. NaN when one class is absent or the classes are
    separated (the slope is then unbounded).
    """
    y = np.asarray(y_true, dtype=np.float64)
    if len(y) == 0 or y.min() == y.max():
        return math.nan, math.nan
    lp = _logit(probability)
    both = _logistic_fit(y, np.column_stack([np.ones_like(lp), lp]), np.zeros_like(lp))
    large = _logistic_fit(y, np.ones((len(lp), 1)), lp)
    return (
        float(both[1]) if both is not None else math.nan,
        float(large[0]) if large is not None else math.nan,
    )


def _candidates(y_score: np.ndarray) -> np.ndarray:
    values = np.unique(np.asarray(y_score, dtype=np.float64))
    inner = (values[:-1] + values[1:]) / 2.0
    return np.concatenate([[values[0] - 1e-9], inner, [values[-1] + 1e-9]])


def youden_threshold(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """The threshold on P(disease control) that maximises sensitivity + specificity - 1.

    Candidates are midpoints between adjacent distinct scores, so the cut never
    sits on a training case; among equally good cuts the middle one is taken.
    """
    y_true = np.asarray(y_true).astype(bool)
    y_score = np.asarray(y_score, dtype=np.float64)
    if y_true.all() or not y_true.any():
        raise ValueError("a threshold needs cases of both classes")
    candidates = _candidates(y_score)
    predicted = y_score[None, :] >= candidates[:, None]
    sensitivity = (predicted & y_true).sum(1) / y_true.sum()
    specificity = (~predicted & ~y_true).sum(1) / (~y_true).sum()
    j = sensitivity + specificity - 1
    best = np.flatnonzero(np.isclose(j, j.max()))
    return float(candidates[best[len(best) // 2]])


def sensitivity_threshold(y_true: np.ndarray, y_score: np.ndarray, target: float) -> float:
    """The lowest threshold whose sensitivity for progression reaches ``target``.

    Progression is predicted when P(disease control) is below the threshold, so the
    lowest threshold that finds ``target`` of the progressions keeps the most
    specificity.
    """
    if not 0.0 < target <= 1.0:
        raise ValueError(f"target sensitivity must be in (0, 1], got {target}")
    y_true = np.asarray(y_true).astype(bool)
    y_score = np.asarray(y_score, dtype=np.float64)
    progression = ~y_true
    if not progression.any() or progression.all():
        raise ValueError("a threshold needs cases of both classes")
    candidates = _candidates(y_score)
    sensitivity = ((y_score[None, :] < candidates[:, None]) & progression).sum(1) / progression.sum()
    return float(candidates[np.flatnonzero(sensitivity >= target - 1e-12)[0]])


def choose_threshold(y_true: np.ndarray, y_score: np.ndarray, target_sensitivity: float | None) -> float:
    """The documented rule: Youden's J, or the target sensitivity for progression when given."""
    if target_sensitivity is None:
        return youden_threshold(y_true, y_score)
    return sensitivity_threshold(y_true, y_score, target_sensitivity)


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else math.nan


@dataclass(frozen=True)
class Metrics:
    """Everything reported for one set of predictions at one threshold."""

    n: int
    progressions: int
    threshold: float
    auc: float
    accuracy: float
    precision: float
    """Disease control as the positive class (the paper's)."""
    recall: float
    """Disease control as the positive class (the paper's)."""
    balanced_accuracy: float
    sensitivity: float
    """Progression as the positive class."""
    specificity: float
    """Progression as the positive class."""
    ppv: float
    """Progression as the positive class."""
    npv: float
    """Progression as the positive class."""
    pr_auc: float
    """Progression as the positive class (score 1 - P(disease control))."""
    brier: float
    calibration_slope: float
    calibration_intercept: float
    predicted_progression: float
    """Fraction of cases predicted progressive."""

    def as_dict(self) -> dict[str, float]:
        return {k: (float(v) if isinstance(v, float) else v) for k, v in asdict(self).items()}


METRIC_NAMES = tuple(
    name for name in Metrics.__dataclass_fields__ if name not in ("n", "progressions", "threshold")
)


def classification_metrics(y_true: np.ndarray, y_score: np.ndarray, threshold: float = 0.5) -> Metrics:
    """Disease control is predicted when its probability is at or above ``threshold``."""
    y_true = np.asarray(y_true).astype(bool)
    y_score = np.asarray(y_score, dtype=np.float64)
    control = y_score >= threshold
    progression_true, progression_predicted = ~y_true, ~control
    tp = int((progression_predicted & progression_true).sum())
    tn = int((control & y_true).sum())
    fp = int((progression_predicted & y_true).sum())
    fn = int((control & progression_true).sum())
    sensitivity = _ratio(tp, tp + fn)
    specificity = _ratio(tn, tn + fp)
    slope, intercept = calibration_slope_intercept(y_true, y_score)
    return Metrics(
        n=len(y_true),
        progressions=int(progression_true.sum()),
        threshold=float(threshold),
        auc=roc_auc(y_true, y_score),
        accuracy=float((control == y_true).mean()) if len(y_true) else math.nan,
        precision=_ratio(tn, tn + fn) if control.any() else 0.0,
        recall=_ratio(tn, int(y_true.sum())) if y_true.any() else 0.0,
        balanced_accuracy=(sensitivity + specificity) / 2,
        sensitivity=sensitivity,
        specificity=specificity,
        ppv=_ratio(tp, tp + fp),
        npv=_ratio(tn, tn + fn),
        pr_auc=average_precision(progression_true, 1.0 - y_score),
        brier=brier_score(y_true, y_score),
        calibration_slope=slope,
        calibration_intercept=intercept,
        predicted_progression=float(progression_predicted.mean()) if len(y_true) else math.nan,
    )


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its 95% bootstrap confidence interval."""

    value: float
    low: float
    high: float

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high

    def as_dict(self) -> dict[str, float]:
        return {"value": self.value, "low": self.low, "high": self.high}

    def __str__(self) -> str:
        return f"{self.value:.3f} (95% CI {self.low:.3f}-{self.high:.3f})"


def _bootstrap_indices(y_true: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """Case indices of stratified resamples: each class resampled within itself."""
    rng = np.random.default_rng(seed)
    parts = [np.flatnonzero(y_true == value) for value in (0, 1)]
    draws = [part[rng.integers(0, len(part), size=(resamples, len(part)))] for part in parts]
    return np.concatenate(draws, axis=1)


def _mean_auc(y_true: np.ndarray, scores: np.ndarray, index: np.ndarray | None = None) -> float:
    """Mean over repeats (rows of ``scores``) of the AUC on cases ``index``."""
    chosen = slice(None) if index is None else index
    return float(np.mean([roc_auc(y_true[chosen], row[chosen]) for row in scores]))


def bootstrap_auc(
    y_true: np.ndarray,
    scores: Sequence[np.ndarray],
    *,
    resamples: int = 1000,
    seed: int = 0,
) -> tuple[list[Estimate], list[Estimate]]:
    """AUCs of several score sets on the same cases, and each one's difference to the first.

    Each score set is (repeats, cases) or (cases,): the statistic is the mean AUC
    over repeats. Resampling is stratified by class and shared by every set, so the
    differences are paired. Returns (AUC estimates, differences set_i - set_0).
    """
    y = np.asarray(y_true).astype(int)
    sets = [np.atleast_2d(np.asarray(s, dtype=np.float64)) for s in scores]
    indices = _bootstrap_indices(y, resamples, seed)
    draws = np.array([[_mean_auc(y, s, index) for s in sets] for index in indices])
    points = [_mean_auc(y, s) for s in sets]

    def estimate(value: float, column: np.ndarray) -> Estimate:
        low, high = np.percentile(column, [2.5, 97.5])
        return Estimate(value, float(low), float(high))

    aucs = [estimate(points[i], draws[:, i]) for i in range(len(sets))]
    differences = [estimate(points[i] - points[0], draws[:, i] - draws[:, 0]) for i in range(len(sets))]
    return aucs, differences


def calibration_bins(
    y_true: np.ndarray, y_score: np.ndarray, bins: int = 10
) -> list[tuple[float, float, int]]:
    """(mean predicted, observed rate, count) per probability bin, for reliability plots."""
    y_true = np.asarray(y_true, dtype=np.float64)
    y_score = np.asarray(y_score, dtype=np.float64)
    edges = np.linspace(0, 1, bins + 1)
    index = np.clip(np.digitize(y_score, edges[1:-1]), 0, bins - 1)
    out = []
    for b in range(bins):
        chosen = index == b
        if chosen.any():
            out.append((float(y_score[chosen].mean()), float(y_true[chosen].mean()), int(chosen.sum())))
    return out
