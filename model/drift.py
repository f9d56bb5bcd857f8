"""Input drift: the training cohort's clinical distribution, and how far live inputs stray from it.

At training time each feature's distribution is summarised (share missing; for
continuous features the decile edges of the training values and the share in
each bin, for coded features the share of each category) and stored in the
checkpoint. Live inputs are binned the same way and compared by the population
stability index, PSI = sum((live - train) * ln(live / train)); by the usual rule
of thumb under 0.1 is stable, 0.1-0.25 a moderate shift, over 0.25 a major one.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from model.schema import FeatureKind, FeatureSchema, FeatureSpec, FeatureValueError

PSI_MAJOR = 0.25
_FLOOR = 1e-4
"""Shares are floored here so an empty bin on one side gives a large, finite PSI."""


def _number(spec: FeatureSpec, value: object) -> float | str | None:
    """The value as the schema reads it; a coded feature stored as its index becomes its category."""
    if spec.kind is FeatureKind.nominal and isinstance(value, int | float) and spec.categories:
        index = int(value) if not (isinstance(value, float) and math.isnan(value)) else -1
        value = spec.categories[index] if 0 <= index < len(spec.categories) else None
    try:
        return spec.to_number(value)
    except FeatureValueError:
        return None


def _bin_shares(values: Sequence[float], edges: Sequence[float]) -> list[float]:
    counts = np.bincount(np.digitize(np.asarray(values, dtype=np.float64), edges), minlength=len(edges) + 1)
    return (counts / max(len(values), 1)).tolist()


def _category_shares(values: Sequence[float | str], categories: Sequence[str]) -> dict[str, float]:
    total = max(len(values), 1)
    return {category: sum(1 for v in values if str(v) == category) / total for category in categories}


def _categories(spec: FeatureSpec) -> list[str]:
    if spec.kind is FeatureKind.nominal:
        return list(spec.categories or ())
    if spec.kind is FeatureKind.binary:
        return ["0.0", "1.0"]
    return [f"{float(i)}" for i in range(len(spec.categories or ()))]


def training_distribution(schema: FeatureSchema, rows: Iterable[Mapping[str, object]]) -> dict[str, Any]:
    """The per-feature summary a checkpoint keeps (JSON-ready)."""
    cases = list(rows)
    features: dict[str, Any] = {}
    for spec in schema.features:
        present = [v for v in (_number(spec, row.get(spec.name)) for row in cases) if v is not None]
        entry: dict[str, Any] = {"missing": 1.0 - len(present) / max(len(cases), 1)}
        if spec.kind is FeatureKind.continuous:
            numbers = [float(v) for v in present]
            if numbers:
                edges = sorted(set(np.quantile(numbers, np.linspace(0.1, 0.9, 9)).tolist()))
                entry["edges"] = edges
                entry["shares"] = _bin_shares(numbers, edges)
        else:
            entry["categories"] = _category_shares(present, _categories(spec))
        features[spec.name] = entry
    return {"cases": len(cases), "features": features}


def psi(expected: Sequence[float], actual: Sequence[float]) -> float:
    e = np.maximum(np.asarray(expected, dtype=np.float64), _FLOOR)
    a = np.maximum(np.asarray(actual, dtype=np.float64), _FLOOR)
    return float(np.sum((a - e) * np.log(a / e)))


@dataclass(frozen=True)
class FeatureDrift:
    feature: str
    cases: int
    missing: float
    training_missing: float
    psi: float | None
    """None when the feature has no training values or no live values to compare."""


def feature_drift(
    schema: FeatureSchema, summary: Mapping[str, Any], rows: Sequence[Mapping[str, object]]
) -> list[FeatureDrift]:
    """Share missing and PSI per feature of live ``rows`` against a checkpoint's training summary."""
    out = []
    for spec in schema.features:
        trained = summary.get("features", {}).get(spec.name)
        if trained is None:
            continue
        present = [v for v in (_number(spec, row.get(spec.name)) for row in rows) if v is not None]
        missing = 1.0 - len(present) / len(rows) if rows else math.nan
        index: float | None = None
        if present and "edges" in trained:
            index = psi(trained["shares"], _bin_shares([float(v) for v in present], trained["edges"]))
        elif present and "categories" in trained:
            categories = list(trained["categories"])
            live = _category_shares(present, categories)
            index = psi([trained["categories"][c] for c in categories], [live[c] for c in categories])
        out.append(FeatureDrift(spec.name, len(rows), missing, float(trained["missing"]), index))
    return out
