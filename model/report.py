"""Reports of training and evaluation: JSON for machines, Markdown and plots for people."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from model.metrics import Metrics, calibration_bins, roc_auc, roc_curve
from model.training import CrossValidation


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


def plot_calibration(y_true: np.ndarray, y_score: np.ndarray, path: Path, title: str) -> Path:
    plt = _plt()
    figure, axis = plt.subplots(figsize=(5.5, 5.5), dpi=120)
    bins = calibration_bins(y_true, y_score)
    if bins:
        predicted, observed, _ = zip(*bins, strict=True)
        axis.plot(predicted, observed, marker="o", label="model")
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


def _pm(summary: dict[str, dict[str, float]], name: str) -> str:
    return f"{summary[name]['mean']:.3f} ± {summary[name]['sd']:.3f}"


def write_cv_report(result: CrossValidation, out: Path, context: dict[str, Any]) -> dict[str, Path]:
    """report.json, report.md, roc.png and calibration.png for one cross-validated variant."""
    out.mkdir(parents=True, exist_ok=True)
    summary = result.summary()
    data = {**context, "cross_validation": result.to_dict()}
    (out / "report.json").write_text(json.dumps(data, indent=2))
    curves = [(f"fold {f.fold}", f.y_true, f.y_score, f.metrics.auc) for f in result.folds]
    y_true = np.concatenate([f.y_true for f in result.folds])
    y_score = np.concatenate([f.y_score for f in result.folds])
    roc = plot_roc(curves, out / "roc.png", f"CLDCA ({result.variant}) - {len(result.folds)}-fold CV")
    calibration = plot_calibration(
        y_true, y_score, out / "calibration.png", f"Calibration ({result.variant})"
    )
    lines = [
        f"# CLDCA cross-validation: {result.variant}",
        "",
        f"Cases: {len(y_true)} ({int(y_true.sum())} disease control, {int((1 - y_true).sum())} progressive). "
        f"Positive class: disease control (CR + PR + SD). Threshold 0.5.",
        "",
        "| fold | n | AUC | accuracy | precision | recall |",
        "| --- | --- | --- | --- | --- | --- |",
        *[
            f"| {f.fold} | {f.metrics.n} | {f.metrics.auc:.3f} | {f.metrics.accuracy:.3f} | "
            f"{f.metrics.precision:.3f} | {f.metrics.recall:.3f} |"
            for f in result.folds
        ],
        f"| mean ± sd | | {_pm(summary, 'auc')} | {_pm(summary, 'accuracy')} | "
        f"{_pm(summary, 'precision')} | {_pm(summary, 'recall')} |",
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


def write_ablation_table(results: Sequence[CrossValidation], out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    rows = [
        "| variant | AUC | accuracy | precision | recall |",
        "| --- | --- | --- | --- | --- |",
    ]
    for result in results:
        s = result.summary()
        rows.append(
            f"| {result.variant} | {_pm(s, 'auc')} | {_pm(s, 'accuracy')} | "
            f"{_pm(s, 'precision')} | {_pm(s, 'recall')} |"
        )
    (out / "ablations.json").write_text(json.dumps({r.variant.value: r.summary() for r in results}, indent=2))
    path = out / "ablations.md"
    path.write_text("# CLDCA ablations (mean ± sd over folds)\n\n" + "\n".join(rows) + "\n")
    pooled = []
    for result in results:
        y_true = np.concatenate([f.y_true for f in result.folds])
        y_score = np.concatenate([f.y_score for f in result.folds])
        pooled.append((result.variant.value, y_true, y_score, roc_auc(y_true, y_score)))
    plot_roc(pooled, out / "ablations_roc.png", "CLDCA ablations (pooled out-of-fold predictions)")
    return path


def write_evaluation_report(
    metrics: Metrics,
    y_true: np.ndarray,
    y_score: np.ndarray,
    case_ids: list[str],
    out: Path,
    context: dict[str, Any],
) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    data = {
        **context,
        "metrics": metrics.as_dict(),
        "cases": [
            {"case_id": c, "label": int(t), "probability": round(float(s), 6)}
            for c, t, s in zip(case_ids, y_true, y_score, strict=True)
        ],
    }
    (out / "evaluation.json").write_text(json.dumps(data, indent=2))
    roc = plot_roc([("model", y_true, y_score, metrics.auc)], out / "roc.png", "CLDCA evaluation")
    calibration = plot_calibration(y_true, y_score, out / "calibration.png", "CLDCA calibration")
    lines = [
        "# CLDCA evaluation",
        "",
        f"Checkpoint: {context.get('checkpoint')} (version {context.get('version')}"
        f"{', DEMO weights trained on synthetic data' if context.get('demo') else ''})",
        "",
        "| n | AUC | accuracy | precision | recall |",
        "| --- | --- | --- | --- | --- |",
        f"| {metrics.n} | {metrics.auc:.3f} | {metrics.accuracy:.3f} | {metrics.precision:.3f} "
        f"| {metrics.recall:.3f} |",
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
