"""What a cross-validation says, in numbers with intervals and in words.

The headline is the AUC of the pooled out-of-fold predictions (averaged over
repeats) with a stratified bootstrap 95% CI, next to the logistic baseline on the
same folds and their paired difference. Guards turn a useless model into a
warning that every surface repeats (report, checkpoint, `tace model info`, the
last line of `tace train`): one class predicted for almost everyone, or an AUC
whose interval contains chance (or lies wholly below it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from model.metrics import METRIC_NAMES, Estimate, Metrics, bootstrap_auc
from model.training import CrossValidation

DEGENERATE_FRACTION = 0.95
"""A model giving one class to at least this share of cases is flagged."""
BOOTSTRAP_RESAMPLES = 1000


def spread(values: list[float]) -> dict[str, float]:
    array = np.asarray(values, dtype=np.float64)
    finite = array[np.isfinite(array)]
    if not len(finite):
        return {"mean": float("nan"), "sd": float("nan")}
    return {
        "mean": float(finite.mean()),
        "sd": float(finite.std(ddof=1)) if len(finite) > 1 else float("nan"),
    }


def metric_spread(metrics: list[Metrics]) -> dict[str, dict[str, float]]:
    return {name: spread([getattr(m, name) for m in metrics]) for name in METRIC_NAMES}


def degenerate_warnings(subject: str, metrics: list[Metrics], auc: Estimate | None) -> list[str]:
    """The guard: near-constant predictions, or discrimination indistinguishable from chance."""
    out = []
    predicted = float(np.mean([m.predicted_progression for m in metrics]))
    majority = max(predicted, 1.0 - predicted)
    if majority >= DEGENERATE_FRACTION:
        which = "progressive disease" if predicted > 0.5 else "disease control"
        out.append(
            f"DEGENERATE: {subject} predicts {which} for {majority:.0%} of cases; "
            "it does not tell the classes apart at its threshold"
        )
    if auc is not None and auc.contains(0.5):
        out.append(f"NOT BETTER THAN CHANCE: {subject}'s AUC {auc} has a 95% CI that contains 0.5")
    elif auc is not None and auc.high < 0.5:
        out.append(
            f"WORSE THAN CHANCE: {subject}'s AUC {auc} lies below 0.5; "
            "on held-out cases its ranking is inverted"
        )
    return out


@dataclass
class CvSummary:
    variant: str
    cases: int
    progressions: int
    folds: int
    repeats: int
    baseline: str
    auc: Estimate
    baseline_auc: Estimate
    difference: Estimate
    """CLDCA minus baseline, paired over the same bootstrap resamples."""
    pooled: dict[str, dict[str, float]]
    baseline_pooled: dict[str, dict[str, float]]
    per_fold: dict[str, dict[str, float]]
    threshold_rule: str
    calibration: str | None
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        d = self.difference
        if d.low > 0:
            return f"CLDCA beats the baseline: AUC difference {d}."
        if d.high < 0:
            return f"CLDCA is WORSE than the baseline: AUC difference {d}."
        return f"CLDCA does not beat the baseline: AUC difference {d} contains 0."

    def to_dict(self) -> dict[str, Any]:
        return {
            "variant": self.variant,
            "cases": self.cases,
            "progressions": self.progressions,
            "folds": self.folds,
            "repeats": self.repeats,
            "auc": self.auc.as_dict(),
            "baseline": {
                "model": self.baseline,
                "auc": self.baseline_auc.as_dict(),
                "pooled": self.baseline_pooled,
            },
            "difference": self.difference.as_dict(),
            "verdict": self.verdict,
            "pooled": self.pooled,
            "per_fold": self.per_fold,
            "threshold_rule": self.threshold_rule,
            "calibration": self.calibration,
            "notes": self.notes,
            "warnings": self.warnings,
        }


def summarize(
    cv: CrossValidation,
    threshold_rule: str,
    calibration: str | None,
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
) -> CvSummary:
    (baseline_auc, auc), (_, difference) = bootstrap_auc(
        cv.y_true, [cv.out_of_fold("baseline"), cv.out_of_fold("model")], resamples=resamples, seed=seed
    )
    pooled = cv.pooled_metrics("model")
    baseline_pooled = cv.pooled_metrics("baseline")
    warnings = degenerate_warnings(f"CLDCA ({cv.variant})", pooled, auc)
    return CvSummary(
        variant=cv.variant.value,
        cases=len(cv.y_true),
        progressions=int((cv.y_true == 0).sum()),
        folds=cv.folds_used,
        repeats=cv.repeats,
        baseline=cv.baseline_name,
        auc=auc,
        baseline_auc=baseline_auc,
        difference=difference,
        pooled=metric_spread(pooled),
        baseline_pooled=metric_spread(baseline_pooled),
        per_fold=metric_spread([f.metrics for f in cv.folds]),
        threshold_rule=threshold_rule,
        calibration=calibration,
        notes=list(cv.notes),
        warnings=warnings,
    )


def compare_variants(
    results: list[CrossValidation],
    reference: CrossValidation,
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
) -> dict[str, tuple[Estimate, Estimate]]:
    """Per variant: its AUC and its paired difference to ``reference`` (same cases, same folds)."""
    scores = [reference.out_of_fold("model")] + [r.out_of_fold("model") for r in results]
    aucs, differences = bootstrap_auc(reference.y_true, scores, resamples=resamples, seed=seed)
    return {r.variant.value: (aucs[i + 1], differences[i + 1]) for i, r in enumerate(results)}
