"""Binary classification metrics with disease control as the positive class."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def roc_auc(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """Area under the ROC curve via the rank statistic (ties count half)."""
    y_true = np.asarray(y_true).astype(bool)
    y_score = np.asarray(y_score, dtype=np.float64)
    positives, negatives = int(y_true.sum()), int((~y_true).sum())
    if positives == 0 or negatives == 0:
        return float("nan")
    order = np.argsort(y_score, kind="mergesort")
    ranks = np.empty(len(y_score), dtype=np.float64)
    sorted_scores = y_score[order]
    start = 0
    while start < len(sorted_scores):
        end = start
        while end + 1 < len(sorted_scores) and sorted_scores[end + 1] == sorted_scores[start]:
            end += 1
        ranks[order[start : end + 1]] = (start + end) / 2.0 + 1.0
        start = end + 1
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


@dataclass(frozen=True)
class Metrics:
    auc: float
    accuracy: float
    precision: float
    recall: float
    n: int

    def as_dict(self) -> dict[str, float]:
        return {
            "auc": self.auc,
            "accuracy": self.accuracy,
            "precision": self.precision,
            "recall": self.recall,
            "n": self.n,
        }


def classification_metrics(y_true: np.ndarray, y_score: np.ndarray, threshold: float = 0.5) -> Metrics:
    y_true = np.asarray(y_true).astype(bool)
    predicted = np.asarray(y_score) >= threshold
    true_positive = int((predicted & y_true).sum())
    return Metrics(
        auc=roc_auc(y_true, y_score),
        accuracy=float((predicted == y_true).mean()) if len(y_true) else float("nan"),
        precision=true_positive / int(predicted.sum()) if predicted.any() else 0.0,
        recall=true_positive / int(y_true.sum()) if y_true.any() else 0.0,
        n=len(y_true),
    )


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
