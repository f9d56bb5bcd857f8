"""The admin page's model-performance view: per version metrics with plots, drift, outcomes, warnings.

Plots are drawn on the server (matplotlib, the training report's own ROC and
calibration plots) and inlined as PNG, so the page needs no script and no
external resource. A banner warns when the live AUC's 95% lower bound is under
the configured alert level (with enough outcomes), when its whole interval lies
below the interval the training report validated, or when any clinical input
drifted past PSI 0.25.
"""

from __future__ import annotations

import base64
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy.engine import Engine

from tace.app.drift import drift_report
from tace.app.outcome_views import recent_outcomes, unlinked_outcomes
from tace.app.performance import VersionPerformance, auc_alerts, performance
from tace.outcomes import LinkWindow, relink
from tace.settings import Settings


def _png(draw: Any, curves: list[Any], title: str) -> str:
    """A model.report plot (which writes a file) as base64 PNG."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "plot.png"
        draw(curves, path, title)
        return base64.b64encode(path.read_bytes()).decode()


def _plots(result: VersionPerformance) -> dict[str, str]:
    from model.report import plot_calibration, plot_roc

    y, p = np.asarray(result.y_true), np.asarray(result.y_score)
    plots = {}
    if result.auc is not None:
        label = f"model {result.model_version}"
        plots["roc"] = _png(
            plot_roc, [(label, y, p, result.auc["value"])], f"ROC, {result.outcomes} outcomes"
        )
    if result.calibration:
        plots["calibration"] = _png(
            plot_calibration, [(f"model {result.model_version}", y, p)], "Calibration"
        )
    return plots


def _active_meta(settings: Settings) -> Any:
    from model.checkpoint import CheckpointError, read_meta
    from worker.context import checkpoint_path

    try:
        return read_meta(checkpoint_path(settings))
    except CheckpointError:
        return None


def performance_page(
    settings: Settings, engine: Engine, *, window: str, identifiers: bool, plots: bool = True
) -> dict[str, Any]:
    """Everything the page shows; ``identifiers`` adds patient IDs (the phi role only)."""
    with engine.begin() as connection:
        relink(connection, LinkWindow(settings.outcome_link_min_weeks, settings.outcome_link_max_weeks))
    meta = _active_meta(settings)
    results = performance(
        engine,
        window=window,
        min_outcomes=settings.performance_min_outcomes,
        checkpoint_thresholds={meta.version: meta.threshold} if meta is not None else None,
    )
    warnings = auc_alerts(
        results,
        auc_lower=settings.performance_alert_auc_lower,
        min_outcomes=settings.performance_alert_min_outcomes,
    )
    trained = (meta.validation.get("auc") if meta is not None else None) or None
    for result in results:
        if trained and result.auc and result.auc["high"] < trained["low"]:
            warnings.append(
                f"model {result.model_version}: live AUC {result.auc['value']:.2f} "
                f"(95% CI {result.auc['low']:.2f}-{result.auc['high']:.2f}) lies below the validated "
                f"{trained['value']:.2f} (95% CI {trained['low']:.2f}-{trained['high']:.2f})"
            )
    drift = drift_report(engine, meta) if meta is not None else None
    if drift is not None and drift.major:
        warnings.append(f"input drift: PSI over 0.25 for {', '.join(drift.major)}")
    return {
        "window": window,
        "versions": [{**r.as_dict(), "plots": _plots(r) if plots else {}} for r in results],
        "validated": meta.validation_statement if meta is not None else None,
        "drift": drift.as_dict() if drift is not None else None,
        "recent": recent_outcomes(engine, 50, identifiers=identifiers),
        "unlinked": unlinked_outcomes(engine, 200, identifiers=identifiers),
        "warnings": warnings,
    }
