"""Reports of training and evaluation: JSON for machines, Markdown and plots for people."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from model.metrics import Estimate, Metrics, calibration_bins, roc_auc, roc_curve
from model.training import CrossValidation
from model.validation import CvSummary, compare_variants


def _plt() -> ModuleType:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_roc(curves: Sequence[tuple[str, np.ndarray, np.ndarray, float]], path: Path, title: str) -> Path:
    """One ROC curve per (label, y_true, y_score, auc), with the chance line."""
    plt = _plt()
    figure, axis = plt.subplots(figsize=(5.5, 5.5), dpi=120)
    for label, y_true, y_score, auc in curves:
        fpr, tpr = roc_curve(y_true, y_score)
        axis.plot(fpr, tpr, linewidth=1.6, label=f"{label} (AUC {auc:.3f})")
    axis.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="chance")
    axis.set(
        xlabel="1 - specificity (false positive rate)",
        ylabel="sensitivity (true positive rate)",
        xlim=(0, 1),
        ylim=(0, 1.01),
        title=title,
    )
    return _save(plt, figure, axis, path, legend="lower right")


def _save(plt: Any, figure: Any, axis: Any, path: Path, *, legend: str) -> Path:
    axis.legend(loc=legend, fontsize=8)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path


def plot_calibration(curves: Sequence[tuple[str, np.ndarray, np.ndarray]], path: Path, title: str) -> Path:
    """Reliability curves, one per (label, y_true, probability), with bin counts."""
    plt = _plt()
    figure, axis = plt.subplots(figsize=(5.5, 5.5), dpi=120)
    for label, y_true, y_score in curves:
        bins = calibration_bins(y_true, y_score)
        if not bins:
            continue
        predicted, observed, _ = zip(*bins, strict=True)
        axis.plot(predicted, observed, marker="o", label=label)
        for x, y, n in bins:
            axis.annotate(str(n), (x, y), textcoords="offset points", xytext=(4, -10), fontsize=7)
    axis.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
    axis.set(
        xlabel="predicted probability of disease control",
        ylabel="observed rate of disease control",
        xlim=(0, 1),
        ylim=(0, 1),
        title=title,
    )
    return _save(plt, figure, axis, path, legend="upper left")


METRIC_ROWS: tuple[tuple[str, str, str], ...] = (
    ("auc", "AUC", "either (symmetric)"),
    ("accuracy", "accuracy", "either"),
    ("precision", "precision", "disease control"),
    ("recall", "recall", "disease control"),
    ("balanced_accuracy", "balanced accuracy", "both (mean of the two recalls)"),
    ("sensitivity", "sensitivity", "progressive disease"),
    ("specificity", "specificity", "progressive disease"),
    ("ppv", "PPV", "progressive disease"),
    ("npv", "NPV", "progressive disease"),
    ("pr_auc", "PR-AUC", "progressive disease"),
    ("brier", "Brier score", "P(disease control)"),
    ("calibration_slope", "calibration slope", "P(disease control)"),
    ("calibration_intercept", "calibration intercept", "P(disease control)"),
    ("predicted_progression", "predicted progressive", "share of cases"),
)
"""(metric, label, positive class): the paper's four first, each with its positive class."""


def _pm(values: dict[str, float]) -> str:
    """Mean ± sd; the mean alone when there was one value (no spread to show)."""
    if np.isnan(values["sd"]):
        return f"{values['mean']:.3f}"
    return f"{values['mean']:.3f} ± {values['sd']:.3f}"


def _warning_lines(warnings: Sequence[str]) -> list[str]:
    return [f"> **{w}**" for w in warnings] + ([""] if warnings else [])


def _planted_lines(provenance: dict[str, Any]) -> list[str]:
    """Say so when the cohort is a synthetic multi-phase one: its signal was put there."""
    if not provenance.get("synthetic") or len(provenance.get("phase_columns", [])) < 2:
        return []
    return [
        "> PLANTED SIGNAL: this synthetic multi-phase cohort puts the label in the lesion's "
        "enhancement pattern (arterial wash-in, portal venous wash-out); a model reading one "
        "phase sees only part of it. This model reads: " + ", ".join(provenance.get("phases", ["any"])) + ".",
        "",
    ]


def write_cv_report(
    result: CrossValidation, summary: CvSummary, out: Path, context: dict[str, Any]
) -> dict[str, Path]:
    """report.json, report.md, roc.png and calibration.png for one cross-validated variant."""
    out.mkdir(parents=True, exist_ok=True)
    data = {**context, "summary": summary.to_dict(), "cross_validation": _cv_dict(result)}
    (out / "report.json").write_text(json.dumps(data, indent=2))
    scores, baseline = result.out_of_fold("model"), result.out_of_fold("baseline")
    first = [f for f in result.folds if f.repeat == 1]
    curves = [(f"fold {f.fold}", f.y_true, f.y_score, f.metrics.auc) for f in first]
    curves += [
        ("CLDCA pooled", result.y_true, scores[0], roc_auc(result.y_true, scores[0])),
        ("baseline pooled", result.y_true, baseline[0], roc_auc(result.y_true, baseline[0])),
    ]
    roc = plot_roc(curves, out / "roc.png", f"CLDCA ({result.variant}) - {result.folds_used}-fold CV")
    y_all = np.tile(result.y_true, result.repeats)
    reliability = [
        ("CLDCA" if not summary.calibration else f"CLDCA, {summary.calibration}", y_all, scores.ravel())
    ]
    if summary.calibration:
        reliability.insert(0, ("CLDCA, before calibration", y_all, result.out_of_fold("raw").ravel()))
    calibration = plot_calibration(
        reliability, out / "calibration.png", f"Calibration ({result.variant}, out-of-fold)"
    )
    provenance = context.get("data", {})
    demo = provenance.get("synthetic") or context.get("demo")
    repeats = f" x {summary.repeats} repeats" if summary.repeats > 1 else ""
    lines = [
        f"# CLDCA cross-validation: {result.variant}",
        "",
        *_warning_lines(summary.warnings),
        *(["> DEMO: trained on a synthetic cohort; no clinical meaning.", ""] if demo else []),
        *_planted_lines(provenance),
        f"Cases: {summary.cases} ({summary.cases - summary.progressions} disease control, "
        f"{summary.progressions} progressive disease)"
        + (
            f", manifest sha256 {provenance['manifest_sha256'][:16]}"
            if "manifest_sha256" in provenance
            else ""
        )
        + ".",
        f"Protocol: stratified {summary.folds}-fold cross-validation{repeats}; "
        f"decision threshold by {summary.threshold_rule}; "
        + (
            f"{summary.calibration} calibration fitted inside each training fold."
            if summary.calibration
            else "no recalibration."
        ),
        *[f"Note: {note}." for note in summary.notes],
        "",
        "## Discrimination (pooled out-of-fold predictions, 95% bootstrap CI)",
        "",
        "| model | AUC |",
        "| --- | --- |",
        f"| CLDCA ({result.variant}) | {summary.auc} |",
        f"| baseline: {summary.baseline} | {summary.baseline_auc} |",
        f"| CLDCA minus baseline | {summary.difference} |",
        "",
        summary.verdict,
        "",
        f"## Metrics of the pooled out-of-fold predictions (mean ± sd over {summary.repeats} repeat(s))",
        "",
        "| metric | positive class | CLDCA | baseline |",
        "| --- | --- | --- | --- |",
        *[
            f"| {label} | {positive} | {_pm(summary.pooled[name])} | {_pm(summary.baseline_pooled[name])} |"
            for name, label, positive in METRIC_ROWS
        ],
        "",
        "## Per fold (thresholds chosen on each training fold)",
        "",
        "| repeat | fold | n | progressive | threshold | AUC | balanced acc. | sensitivity | specificity "
        "| Brier | epochs | baseline AUC |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        *[
            f"| {f.repeat} | {f.fold} | {f.metrics.n} | {f.metrics.progressions} | {f.metrics.threshold:.3f} "
            f"| {f.metrics.auc:.3f} | {f.metrics.balanced_accuracy:.3f} | {f.metrics.sensitivity:.3f} "
            f"| {f.metrics.specificity:.3f} | {f.metrics.brier:.3f} | {f.best_epoch} "
            f"| {f.baseline_metrics.auc:.3f} |"
            for f in result.folds
        ],
        f"| mean ± sd | | | | | {_pm(summary.per_fold['auc'])} "
        f"| {_pm(summary.per_fold['balanced_accuracy'])} "
        f"| {_pm(summary.per_fold['sensitivity'])} | {_pm(summary.per_fold['specificity'])} "
        f"| {_pm(summary.per_fold['brier'])} | | |",
        "",
        "![ROC](roc.png) ![Calibration](calibration.png)",
        "",
        "Settings: " + ", ".join(f"{k}={v}" for k, v in context.get("settings", {}).items()),
    ]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    return {
        "json": out / "report.json",
        "markdown": out / "report.md",
        "roc": roc,
        "calibration": calibration,
    }


def _cv_dict(result: CrossValidation) -> dict[str, Any]:
    return {
        "variant": result.variant.value,
        "folds_used": result.folds_used,
        "repeats": result.repeats,
        "baseline": result.baseline_name,
        "notes": result.notes,
        "folds": [
            {
                "repeat": f.repeat,
                "fold": f.fold,
                **f.metrics.as_dict(),
                "best_epoch": f.best_epoch,
                "baseline": f.baseline_metrics.as_dict(),
                "cases": f.case_ids,
                "y_true": f.y_true.tolist(),
                "y_score": [round(float(s), 6) for s in f.y_score],
                "baseline_score": [round(float(s), 6) for s in f.baseline_score],
            }
            for f in result.folds
        ],
    }


def write_ablation_table(
    results: Sequence[CrossValidation], summaries: Sequence[CvSummary], out: Path
) -> Path:
    """ablations.md/.json and a pooled ROC plot; every AUC with its CI and its paired difference to full."""
    out.mkdir(parents=True, exist_ok=True)
    reference = next((r for r in results if r.variant.value == "full"), results[0])
    compared = compare_variants(list(results), reference)
    rows = [
        f"| variant | AUC (95% CI) | AUC minus {reference.variant} (95% CI) | balanced accuracy "
        "| sensitivity "
        "| specificity | accuracy | precision | recall |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    table: dict[str, Any] = {}
    for result, summary in zip(results, summaries, strict=True):
        auc, difference = compared[result.variant.value]
        p = summary.pooled
        rows.append(
            f"| {result.variant} | {auc} | {'-' if result is reference else difference} "
            f"| {_pm(p['balanced_accuracy'])} | {_pm(p['sensitivity'])} | {_pm(p['specificity'])} "
            f"| {_pm(p['accuracy'])} | {_pm(p['precision'])} | {_pm(p['recall'])} |"
        )
        table[result.variant.value] = {
            "auc": auc.as_dict(),
            "difference_to_reference": difference.as_dict(),
            "summary": summary.to_dict(),
        }
    base = summaries[0]
    inputs = "clinical + image" if reference.variant.uses_image else "clinical"
    rows.append(f"| baseline ({inputs}) | {base.baseline_auc} | | | | | | | |")
    warnings = [w for s in summaries for w in s.warnings]
    (out / "ablations.json").write_text(json.dumps(table, indent=2))
    path = out / "ablations.md"
    path.write_text(
        "# CLDCA ablations\n\n"
        + "".join(line + "\n" for line in _warning_lines(warnings))
        + "AUC of the pooled out-of-fold predictions with 95% bootstrap CIs; differences are paired "
        "(same cases, same folds, same resamples). Other columns: mean ± sd over repeats; precision "
        "and recall count disease control as positive, sensitivity and specificity progression.\n\n"
        + "\n".join(rows)
        + "\n"
    )
    pooled = []
    for result in results:
        scores = result.out_of_fold("model")[0]
        pooled.append((result.variant.value, result.y_true, scores, roc_auc(result.y_true, scores)))
    plot_roc(pooled, out / "ablations_roc.png", "CLDCA ablations (pooled out-of-fold predictions)")
    return path


def write_evaluation_report(
    metrics: Metrics,
    auc: Estimate,
    y_true: np.ndarray,
    y_score: np.ndarray,
    case_ids: list[str],
    out: Path,
    context: dict[str, Any],
    warnings: Sequence[str] = (),
) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    data = {
        **context,
        "metrics": metrics.as_dict(),
        "auc_ci": auc.as_dict(),
        "warnings": list(warnings),
        "cases": [
            {"case_id": c, "label": int(t), "probability": round(float(s), 6)}
            for c, t, s in zip(case_ids, y_true, y_score, strict=True)
        ],
    }
    (out / "evaluation.json").write_text(json.dumps(data, indent=2))
    roc = plot_roc([("model", y_true, y_score, metrics.auc)], out / "roc.png", "CLDCA evaluation")
    calibration = plot_calibration([("model", y_true, y_score)], out / "calibration.png", "CLDCA calibration")
    lines = [
        "# CLDCA evaluation",
        "",
        *_warning_lines(warnings),
        f"Checkpoint: {context.get('checkpoint')} (version {context.get('version')}"
        f"{', DEMO weights trained on synthetic data' if context.get('demo') else ''})",
        f"Cases: {metrics.n} ({metrics.n - metrics.progressions} disease control, {metrics.progressions} "
        f"progressive disease). Threshold {metrics.threshold:.3f} on P(disease control), "
        "from the checkpoint.",
        "",
        f"AUC {auc}",
        "",
        "| metric | positive class | value |",
        "| --- | --- | --- |",
        *[
            f"| {label} | {positive} | {getattr(metrics, name):.3f} |"
            for name, label, positive in METRIC_ROWS
        ],
        "",
        "![ROC](roc.png) ![Calibration](calibration.png)",
    ]
    (out / "evaluation.md").write_text("\n".join(lines) + "\n")
    return {
        "json": out / "evaluation.json",
        "markdown": out / "evaluation.md",
        "roc": roc,
        "calibration": calibration,
    }
