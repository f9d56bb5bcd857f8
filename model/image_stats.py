"""Image drift: simple per-series statistics, the training cohort's summary of them, and PSI against it.

A site's scanner, protocol or reconstruction can change without any clinical
value moving: thinner slices, a different kernel, a dose change. Per series
the gateway records the slice count, the slice thickness and a summary of the
body region's HU (voxels above -500 HU, so air around the patient does not
count: mean and 10th/50th/90th percentiles). Training keeps the same
statistics' distribution in the checkpoint (decile edges and shares, as for
clinical features); live series are binned alike and compared by PSI.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from model.drift import psi

STATISTICS = ("slices", "slice_thickness_mm", "body_hu_mean", "body_hu_p10", "body_hu_p50", "body_hu_p90")
BODY_HU = -500.0
"""Voxels above this are body (soft tissue, fluid, bone), below it air and lung."""
MAX_VOXELS = 500_000
"""In-plane subsampling keeps the summary to tens of milliseconds for any series size."""


def volume_statistics(hu: np.ndarray, slice_thickness_mm: float | None) -> dict[str, float | None]:
    """The statistics of one model input: (slices, rows, columns) or (slices, phases, rows, columns) HU."""
    stride = max(1, math.ceil(math.sqrt(hu.size / MAX_VOXELS)))
    sample = np.asarray(hu[..., ::stride, ::stride], dtype=np.float32)
    body = sample[sample > BODY_HU]
    stats: dict[str, float | None] = {
        "slices": float(hu.shape[0]),
        "slice_thickness_mm": float(slice_thickness_mm) if slice_thickness_mm else None,
        "body_hu_mean": None,
        "body_hu_p10": None,
        "body_hu_p50": None,
        "body_hu_p90": None,
    }
    if body.size:
        p10, p50, p90 = np.percentile(body, [10, 50, 90]).tolist()
        stats.update(
            body_hu_mean=round(float(body.mean()), 2),
            body_hu_p10=round(p10, 2),
            body_hu_p50=round(p50, 2),
            body_hu_p90=round(p90, 2),
        )
    return stats


def _present(rows: Sequence[Mapping[str, Any]], name: str) -> list[float]:
    return [float(v) for v in (row.get(name) for row in rows) if v is not None]


def _shares(values: Sequence[float], edges: Sequence[float]) -> list[float]:
    counts = np.bincount(np.digitize(np.asarray(values, dtype=np.float64), edges), minlength=len(edges) + 1)
    return (counts / max(len(values), 1)).tolist()


def image_distribution(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The training cohort's summary a checkpoint keeps (JSON-ready), one entry per statistic."""
    statistics: dict[str, Any] = {}
    for name in STATISTICS:
        values = _present(rows, name)
        entry: dict[str, Any] = {"missing": 1.0 - len(values) / max(len(rows), 1)}
        if values:
            edges = sorted(set(np.quantile(values, np.linspace(0.1, 0.9, 9)).tolist()))
            entry.update(median=float(np.median(values)), edges=edges, shares=_shares(values, edges))
        statistics[name] = entry
    return {"cases": len(rows), "statistics": statistics}


def image_drift(summary: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per statistic: training and live median, share missing live, and PSI (None without values)."""
    out = []
    for name in STATISTICS:
        trained = summary.get("statistics", {}).get(name)
        if trained is None:
            continue
        values = _present(rows, name)
        index = (
            psi(trained["shares"], _shares(values, trained["edges"]))
            if values and "edges" in trained
            else None
        )
        out.append(
            {
                "statistic": name,
                "training_median": trained.get("median"),
                "live_median": float(np.median(values)) if values else None,
                "missing": 1.0 - len(values) / len(rows) if rows else None,
                "psi": index,
            }
        )
    return out
