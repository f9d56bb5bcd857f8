"""The clinical features this feed collects, as plain data handed over by the caller.

The feature schema belongs to the model (it is frozen into every checkpoint); this
package must not import the model, so callers pass the definitions in. Only what
the feed needs is kept: the canonical unit, the valid range, the categories of
coded values and how old a value may be.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class FeatureDefinition:
    name: str
    kind: str
    unit: str | None = None
    valid_range: tuple[float, float] | None = None
    categories: tuple[str, ...] | None = None
    window_days: float | None = 30.0

    @classmethod
    def from_schema_item(cls, item: Mapping[str, Any]) -> FeatureDefinition:
        valid_range = item.get("range")
        categories = item.get("categories")
        return cls(
            name=str(item["name"]),
            kind=str(item["kind"]),
            unit=item.get("unit"),
            valid_range=(float(valid_range[0]), float(valid_range[1])) if valid_range else None,
            categories=tuple(str(c) for c in categories) if categories else None,
            window_days=item.get("window_days"),
        )


def definitions_from_schema(schema: Mapping[str, Any]) -> dict[str, FeatureDefinition]:
    """From the model schema's dict form (``FeatureSchema.to_dict()``)."""
    return {d.name: d for d in (FeatureDefinition.from_schema_item(i) for i in schema["features"])}


def names(definitions: Iterable[FeatureDefinition]) -> list[str]:
    return [d.name for d in definitions]
