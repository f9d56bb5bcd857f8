"""The clinical feature schema: data, not code.

A schema file lists each feature's kind, canonical unit and valid range. Training
fits a min-max normalization and the imputation medians on the training set only;
both are stored in the checkpoint, so inference encodes exactly as training did.
A missing value is never a silent zero: it is imputed with the training median
and flagged in a mask that travels with the result (and feeds the network when
the config asks for it), so the report can say which features were missing.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import yaml

DEFAULT_SCHEMA = "cldca43.yaml"
_TRUE = {"1", "true", "yes", "y", "positive", "present", "pos"}
_FALSE = {"0", "false", "no", "n", "negative", "absent", "neg"}


class SchemaError(ValueError):
    """A schema file or a value that does not fit it; the message names the feature."""


class FeatureValueError(SchemaError):
    """A value one feature cannot take; ``detail`` says why without naming the feature.

    Callers that show the feature in their own words (a CSV import line, an HL7
    rejection) use ``detail``; everyone else gets the feature named in the message.
    """

    def __init__(self, feature: str, detail: str) -> None:
        super().__init__(f"feature {feature!r}: {detail}")
        self.feature = feature
        self.detail = detail


class FeatureKind(enum.StrEnum):
    binary = "binary"
    ordinal = "ordinal"
    continuous = "continuous"
    nominal = "nominal"


@dataclass(frozen=True)
class FeatureSpec:
    name: str
    kind: FeatureKind
    group: str = "other"
    unit: str | None = None
    valid_range: tuple[float, float] | None = None
    categories: tuple[str, ...] | None = None
    window_days: float | None = 30.0
    description: str = ""
    log_scale: bool = False
    """Normalize log10(1 + value): for markers such as AFP that span orders of magnitude."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", FeatureKind(self.kind))
        if self.log_scale and self.kind is not FeatureKind.continuous:
            raise SchemaError(f"feature {self.name!r}: log_scale applies to continuous features only")
        if self.kind in (FeatureKind.ordinal, FeatureKind.nominal) and not self.categories:
            raise SchemaError(f"feature {self.name!r}: kind {self.kind} needs categories")
        if self.categories is not None:
            object.__setattr__(self, "categories", tuple(str(c) for c in self.categories))
        if self.kind is FeatureKind.binary and self.categories and len(self.categories) != 2:
            raise SchemaError(f"feature {self.name!r}: a binary feature has exactly 2 categories")
        if self.valid_range is not None:
            low, high = (float(v) for v in self.valid_range)
            if not low < high:
                raise SchemaError(f"feature {self.name!r}: range low {low} is not below high {high}")
            object.__setattr__(self, "valid_range", (low, high))

    @property
    def label(self) -> str:
        """The feature in words for reports and pages: its description less a trailing aside."""
        words = re.sub(r"\s*\([^()]*\)?$", "", self.description).strip()
        return words or self.name.replace("_", " ")

    @property
    def columns(self) -> list[str]:
        if self.kind is FeatureKind.nominal:
            assert self.categories is not None
            return [f"{self.name}={c}" for c in self.categories]
        return [self.name]

    def to_number(self, value: object) -> float | str | None:
        """A raw value as the model's number (or a category for nominal); None when missing."""
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return None
        if isinstance(value, str):
            value = value.strip()
            if value == "":
                return None
        if self.kind is FeatureKind.nominal:
            assert self.categories is not None
            text = str(value)
            if text not in self.categories:
                raise FeatureValueError(self.name, f"{text!r} is not one of {list(self.categories)}")
            return text
        if self.kind is FeatureKind.binary:
            return float(self._binary(value))
        if self.kind is FeatureKind.ordinal:
            return float(self._ordinal(value))
        number = _as_float(self.name, value)
        if not self.in_range(number):
            assert self.valid_range is not None
            low, high = self.valid_range
            raise FeatureValueError(
                self.name,
                f"{number:g} {self.unit or ''} is outside the valid range {low:g}..{high:g}".replace(
                    "  ", " "
                ),
            )
        return number

    def in_range(self, value: float) -> bool:
        """Inside the range that is physically possible for this feature (no range: always)."""
        return self.valid_range is None or self.valid_range[0] <= value <= self.valid_range[1]

    def accepted_values(self) -> str:
        """What ``to_number`` takes for this feature, in words, for messages that list it."""
        if self.kind is FeatureKind.continuous:
            span = f" in {self.valid_range[0]:g}..{self.valid_range[1]:g}" if self.valid_range else ""
            return f"a number{span}{f' {self.unit}' if self.unit else ''}"
        assert self.kind is FeatureKind.binary or self.categories is not None
        if self.kind is FeatureKind.binary:
            coded = f"{self.categories[0]} or {self.categories[1]}, " if self.categories else ""
            return coded + "yes/no, y/n, true/false, 1/0, positive/negative, present/absent"
        listed = ", ".join(self.categories or ())
        if self.kind is FeatureKind.ordinal:
            return f"{listed} (or 0..{len(self.categories or ()) - 1})"
        return listed

    def _binary(self, value: object) -> int:
        if self.categories is not None and str(value) in self.categories:
            return self.categories.index(str(value))
        if isinstance(value, bool):
            return int(value)
        text = str(value).strip().lower()
        if text in _TRUE:
            return 1
        if text in _FALSE:
            return 0
        try:
            number = float(text)
        except ValueError:
            number = math.nan
        if number in (0.0, 1.0):
            return int(number)
        raise FeatureValueError(self.name, f"{value!r} is not a yes/no value")

    def _ordinal(self, value: object) -> int:
        assert self.categories is not None
        text = str(value).strip()
        if text in self.categories:
            return self.categories.index(text)
        try:
            number = float(text)
        except ValueError:
            number = math.nan
        if number.is_integer() and 0 <= number < len(self.categories):
            return int(number)
        raise FeatureValueError(self.name, f"{value!r} is not one of {list(self.categories)}")


def _as_float(name: str, value: object) -> float:
    try:
        number = float(value)  # type: ignore[arg-type]  # any value may come in: float() refusing it is the check
    except (TypeError, ValueError):
        raise FeatureValueError(name, f"{value!r} is not a number") from None
    if not math.isfinite(number):
        raise FeatureValueError(name, f"{value!r} is not a finite number")
    return number


@dataclass(frozen=True)
class Normalization:
    """Per-column training-set minimum, maximum and median (the imputation value)."""

    minimum: dict[str, float]
    maximum: dict[str, float]
    median: dict[str, float]

    def to_dict(self) -> dict[str, dict[str, float]]:
        return {"minimum": self.minimum, "maximum": self.maximum, "median": self.median}

    @classmethod
    def from_dict(cls, data: Mapping[str, Mapping[str, float]]) -> Normalization:
        return cls(dict(data["minimum"]), dict(data["maximum"]), dict(data["median"]))


@dataclass(frozen=True)
class EncodedClinical:
    values: np.ndarray
    missing: np.ndarray
    missing_features: list[str] = field(default_factory=list)

    def network_input(self, feed_missing_mask: bool) -> np.ndarray:
        if feed_missing_mask:
            return np.concatenate([self.values, self.missing.astype(np.float32)])
        return self.values


@dataclass(frozen=True)
class FeatureSchema:
    name: str
    version: int
    features: tuple[FeatureSpec, ...]

    def __post_init__(self) -> None:
        names = [f.name for f in self.features]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise SchemaError(f"schema {self.name!r}: duplicate features {duplicates}")
        if not self.features:
            raise SchemaError(f"schema {self.name!r} has no features")

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.features]

    @property
    def columns(self) -> list[str]:
        return [column for feature in self.features for column in feature.columns]

    def by_name(self) -> dict[str, FeatureSpec]:
        """Name -> feature, in schema order: how the clinical feed is handed the schema."""
        return {f.name: f for f in self.features}

    def feature(self, name: str) -> FeatureSpec:
        for feature in self.features:
            if feature.name == name:
                return feature
        raise KeyError(name)

    @classmethod
    def load(cls, path: Path | None = None) -> FeatureSchema:
        """The schema in ``path``, or the shipped paper schema."""
        if path is None:
            text = resources.files("model.schemas").joinpath(DEFAULT_SCHEMA).read_text()
            source = DEFAULT_SCHEMA
        else:
            text, source = path.read_text(), str(path)
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise SchemaError(f"{source}: not valid YAML ({exc})") from None
        return cls.from_dict(data, source)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "schema") -> FeatureSchema:
        try:
            features = tuple(
                FeatureSpec(
                    name=str(item["name"]),
                    kind=FeatureKind(item["kind"]),
                    group=str(item.get("group", "other")),
                    unit=item.get("unit"),
                    valid_range=tuple(item["range"]) if item.get("range") is not None else None,
                    categories=tuple(item["categories"]) if item.get("categories") else None,
                    window_days=item.get("window_days", 30.0),
                    description=str(item.get("description", "")),
                    log_scale=bool(item.get("log_scale", False)),
                )
                for item in data["features"]
            )
            return cls(name=str(data["name"]), version=int(data.get("version", 1)), features=features)
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, SchemaError):
                raise
            raise SchemaError(f"{source}: malformed schema ({exc.__class__.__name__}: {exc})") from None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "features": [
                {
                    "name": f.name,
                    "kind": f.kind.value,
                    "group": f.group,
                    "unit": f.unit,
                    "range": list(f.valid_range) if f.valid_range else None,
                    "categories": list(f.categories) if f.categories else None,
                    "window_days": f.window_days,
                    "description": f.description,
                    "log_scale": f.log_scale,
                }
                for f in self.features
            ],
        }

    def _raw_columns(self, values: Mapping[str, object]) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        for feature in self.features:
            number = feature.to_number(values.get(feature.name))
            if feature.kind is FeatureKind.nominal:
                for column, category in zip(feature.columns, feature.categories or (), strict=True):
                    out[column] = None if number is None else float(number == category)
            elif number is None:
                out[feature.name] = None
            else:
                value = float(number)
                out[feature.name] = math.log10(1.0 + max(value, 0.0)) if feature.log_scale else value
        return out

    def fit(self, rows: Iterable[Mapping[str, object]]) -> Normalization:
        """Min, max and median per column over the training rows (missing values ignored)."""
        columns: dict[str, list[float]] = {c: [] for c in self.columns}
        for row in rows:
            for column, value in self._raw_columns(row).items():
                if value is not None:
                    columns[column].append(value)
        minimum, maximum, median = {}, {}, {}
        for column, seen in columns.items():
            if seen:
                array = np.asarray(seen, dtype=np.float64)
                minimum[column], maximum[column] = float(array.min()), float(array.max())
                median[column] = float(np.median(array))
            else:
                minimum[column], maximum[column], median[column] = 0.0, 1.0, 0.0
        return Normalization(minimum, maximum, median)

    def encode(self, values: Mapping[str, object], normalization: Normalization) -> EncodedClinical:
        raw = self._raw_columns(values)
        encoded = np.zeros(len(raw), dtype=np.float32)
        missing = np.zeros(len(raw), dtype=bool)
        for index, (column, value) in enumerate(raw.items()):
            if value is None:
                missing[index] = True
                value = normalization.median[column]
            low, high = normalization.minimum[column], normalization.maximum[column]
            scaled = (value - low) / (high - low) if high > low else 0.0
            encoded[index] = min(max(scaled, 0.0), 1.0)
        missing_features = [f.name for f in self.features if any(raw[c] is None for c in f.columns)]
        return EncodedClinical(encoded, missing, missing_features)

    def check_names(self, names: Sequence[str]) -> list[str]:
        """Names that are not features of this schema."""
        known = set(self.names)
        return [n for n in names if n not in known]
