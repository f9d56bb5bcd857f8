"""The clinical values behind a prediction, in words: what the SR states and a reader can check.

Features are named by their schema label (``serum albumin``, not ``albumin``),
the missing ones counted against the schema's total, and every value used is
given with its unit, when it was observed and where it came from, so a
radiologist can tell a fresh lab from a month-old one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from hl7_clinical.features import ClinicalFeatures, FeatureValue
from model.schema import FeatureKind, FeatureSpec
from tace.display import missing_text


@dataclass(frozen=True)
class ClinicalSummary:
    total: int
    missing: tuple[str, ...]
    """Labels of the features the model had no value for (imputed)."""
    used: tuple[str, ...]
    """One line per value used: label, value and unit, observation date, source."""

    @property
    def missing_text(self) -> str:
        return missing_text(self.missing, self.total)


def label(name: str, schema: Mapping[str, FeatureSpec]) -> str:
    spec = schema.get(name)
    return spec.label if spec is not None else name.replace("_", " ")


def _value(value: FeatureValue, spec: FeatureSpec | None) -> str:
    """Coded features as sent (``M``); numbers in the canonical unit (``text`` is the raw value)."""
    coded = spec is not None and spec.kind is not FeatureKind.continuous
    if value.text is not None and (coded or value.value != value.value):
        shown = value.text
    else:
        shown = f"{value.comparator or ''}{value.value:g}"
    unit = (value.unit or "").strip("{}")
    return f"{shown} {unit}".strip()


def used_line(value: FeatureValue, schema: Mapping[str, FeatureSpec]) -> str:
    observed = f"observed {value.observed_at:%Y-%m-%d %H:%M}" if value.observed_at else "no observation date"
    return f"{label(value.name, schema)} {_value(value, schema.get(value.name))} ({observed}; {value.source})"


def summarize(
    features: ClinicalFeatures, missing: Sequence[str], schema: Mapping[str, FeatureSpec]
) -> ClinicalSummary:
    """``missing``: the feature names the model reported missing (they were imputed)."""
    used = [value for name, value in features.values.items() if value is not None and name not in missing]
    return ClinicalSummary(
        total=len(schema),
        missing=tuple(label(name, schema) for name in missing),
        used=tuple(used_line(value, schema) for value in used),
    )
