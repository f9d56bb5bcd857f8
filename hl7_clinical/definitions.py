"""The clinical features this feed collects: the model's feature schema, seen through a protocol.

The schema is defined once, by the model (its YAML and every checkpoint carry
it): each feature's kind, canonical unit, valid range, categories, look-back
window, and the rules that read a raw value (yes/no words, category names,
ranges). This package must not import the model, so the app wing hands the
schema's features in; the feed relies on nothing but what this protocol names,
which keeps a CSV import, an HL7 result and a training manifest reading a value
the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol


class FeatureRules(Protocol):
    """One feature of the model's schema (``model.schema.FeatureSpec`` satisfies it)."""

    @property
    def name(self) -> str: ...

    @property
    def kind(self) -> str:
        """binary, ordinal, nominal or continuous."""
        ...

    @property
    def unit(self) -> str | None: ...

    @property
    def categories(self) -> tuple[str, ...] | None: ...

    @property
    def valid_range(self) -> tuple[float, float] | None: ...

    @property
    def window_days(self) -> float | None: ...

    def to_number(self, value: object) -> float | str | None:
        """The model's reading of a raw value; raises ValueError naming what is wrong with it."""
        ...

    def in_range(self, value: float) -> bool: ...


Definitions = Mapping[str, FeatureRules]
"""Feature name -> its rules, in the schema's order."""
