"""Training data: the manifest CSV and the volumes it points at.

A manifest has one row per case: ``case_id``, ``label``, ``volume`` (a cached
``.npy``/``.npz`` HU volume, or a DICOM series folder that the caller's loader
reads; not needed for clinical-only models), then one column per schema feature
it has values for. A multi-phase model reads one column per contrast phase
instead (``volume_arterial``, ``volume_portal_venous``, ``volume_delayed``; the
phases of a case share one slice grid), and a single-phase model may name its
phase's column. An optional ``slice_thickness_mm`` column records each case's
reconstruction, so the checkpoint's input contract states the range it was
trained on. A header ``name[unit]`` gives that column's unit; values are
converted to the schema's canonical unit by the caller's unit table (the clinical
feed's), so centimetres never pass as millimetres. ``NA``, ``.`` and empty cells
are missing. A ``synthetic`` column marks generated cases. Labels are mRECIST
(CR, PR, SD, PD) or the two class names; numeric codes only with the value that
means progressive disease named, because sites code it both ways round. Every
problem is reported, one per line with its line, column and value, before any
training starts.
"""

from __future__ import annotations

import csv
import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from model.config import CLASS_NAMES
from model.contract import LEGACY_PHASES, PHASES, validate_phases
from model.schema import FeatureKind, FeatureSchema, FeatureValueError, SchemaError

VolumeLoader = Callable[[Path], np.ndarray]

UnitConverter = Callable[[str, float, str], float]
"""``(feature, value, unit)`` -> the value in the feature's canonical unit.

Raises ``ValueError`` saying why when the unit is unknown for that feature."""

LABELS = {
    "cr": 1,
    "pr": 1,
    "sd": 1,
    CLASS_NAMES[1]: 1,
    "pd": 0,
    CLASS_NAMES[0]: 0,
}
"""Disease control is CR, PR or SD (mRECIST); progressive disease is PD."""

ACCEPTED_LABELS = f"CR, PR, SD, PD, {CLASS_NAMES[1]} or {CLASS_NAMES[0]}"
MISSING = frozenset({"", "na", "n/a", ".", "nan"})
"""Cell values that mean "not measured"."""

SYNTHETIC_COLUMN = "synthetic"
THICKNESS_COLUMN = "slice_thickness_mm"
PHASE_COLUMN_PREFIX = "volume_"
_RESERVED = (
    "case_id",
    "label",
    "volume",
    SYNTHETIC_COLUMN,
    THICKNESS_COLUMN,
    *(PHASE_COLUMN_PREFIX + p for p in PHASES),
)
_UNIT_HEADER = re.compile(r"^(?P<name>[^\[\]]+?)\s*\[(?P<unit>[^\[\]]*)\]$")
_YES = frozenset({"yes", "y", "true", "1"})
_NO = frozenset({"no", "n", "false", "0", ""})


class ManifestError(ValueError):
    """Problems in a manifest, one per line, each with its line number, column and value."""

    def __init__(self, path: Path, problems: list[str]) -> None:
        count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
        super().__init__(f"{path}: {count}\n" + "\n".join(f"  {p}" for p in problems))
        self.problems = problems


@dataclass(frozen=True)
class ManifestCase:
    case_id: str
    label: int
    volume: Path | None
    """The first channel's volume (the only one for a single-phase model)."""
    clinical: dict[str, object]
    line: int
    phase_volumes: tuple[Path, ...] = ()
    """One volume per channel of a multi-phase model, in the declared phase order."""
    slice_thickness_mm: float | None = None

    @property
    def volume_paths(self) -> tuple[Path, ...]:
        if self.phase_volumes:
            return self.phase_volumes
        return (self.volume,) if self.volume is not None else ()


@dataclass(frozen=True)
class Manifest:
    """The cases of a manifest and what a checkpoint must record about where they came from."""

    path: Path
    cases: list[ManifestCase]
    sha256: str
    synthetic: bool
    columns: list[str]
    units: dict[str, str] = field(default_factory=dict)
    positive_label: str | None = None
    phases: tuple[str, ...] = LEGACY_PHASES
    """The channels its volumes fill (``model.contract``)."""
    volume_columns: tuple[str, ...] = ()
    phase_columns: tuple[str, ...] = ()
    """Every ``volume_<phase>`` column of the file, read or not."""

    @property
    def class_counts(self) -> dict[str, int]:
        return {
            name: sum(1 for c in self.cases if c.label == index) for index, name in enumerate(CLASS_NAMES)
        }

    def provenance(self) -> dict[str, object]:
        return {
            "manifest": str(self.path),
            "manifest_sha256": self.sha256,
            "cases": len(self.cases),
            "class_counts": self.class_counts,
            "synthetic": self.synthetic,
            "feature_columns": self.columns,
            "units": self.units,
            "phases": list(self.phases),
            "volume_columns": list(self.volume_columns),
            "phase_columns": list(self.phase_columns),
            **({"positive_label": self.positive_label} if self.positive_label is not None else {}),
        }


@dataclass(frozen=True)
class _Column:
    header: str
    feature: str
    unit: str | None


def _feature_columns(
    header: list[str], schema: FeatureSchema, units: UnitConverter | None, problems: list[str]
) -> list[_Column]:
    columns: list[_Column] = []
    known = set(schema.names)
    for raw in header:
        text = raw.strip()
        if text in _RESERVED:
            continue
        match = _UNIT_HEADER.match(text)
        name, unit = (match["name"].strip(), match["unit"].strip()) if match else (text, None)
        if name not in known:
            problems.append(f"column {raw!r}: not a feature of schema {schema.name}")
            continue
        if any(c.feature == name for c in columns):
            problems.append(f"column {raw!r}: feature {name} has more than one column")
            continue
        spec = schema.feature(name)
        if unit is not None:
            if spec.kind is not FeatureKind.continuous:
                problems.append(f"column {raw!r}: {name} is a coded feature and takes no unit")
                continue
            if unit != (spec.unit or ""):
                if units is None:
                    problems.append(
                        f"column {raw!r}: unit {unit!r} is not the schema's {spec.unit!r} "
                        "and no unit table was given to convert it"
                    )
                    continue
                try:
                    units(name, 1.0, unit)
                except ValueError as exc:
                    problems.append(f"column {raw!r}: {exc}")
                    continue
            else:
                unit = None
        columns.append(_Column(raw, name, unit))
    return columns


def _cell(row: dict[str, str | None], header: str) -> str:
    return (row.get(header) or "").strip()


def _value(column: _Column, text: str, schema: FeatureSchema, units: UnitConverter | None) -> object:
    """The canonical value of one cell; raises ``SchemaError`` or ``ValueError`` with the reason."""
    if text.lower() in MISSING:
        return None
    spec = schema.feature(column.feature)
    value: object = text
    if column.unit is not None and units is not None:
        try:
            number = float(text)
        except ValueError:
            raise ValueError(f"{text!r} is not a number") from None
        value = units(column.feature, number, column.unit)
    try:
        spec.to_number(value)
    except SchemaError as exc:
        reason = exc.detail if isinstance(exc, FeatureValueError) else str(exc)
        if spec.kind is FeatureKind.binary:
            reason += f" (accepted: {spec.accepted_values()})"
        if column.unit is not None:
            reason += f" after converting {text} {column.unit}"
        raise ValueError(reason) from None
    return value


class _Labels:
    """Maps label cells to classes; numeric codes need the value that means progression."""

    def __init__(self, positive_label: str | None) -> None:
        self.positive = positive_label.strip().lower() if positive_label is not None else None
        self.other: str | None = None

    def __call__(self, text: str) -> int:
        lowered = text.strip().lower()
        if lowered in LABELS:
            return LABELS[lowered]
        if lowered in MISSING:
            raise ValueError(f"missing; expected {ACCEPTED_LABELS}")
        if self.positive is None:
            if _is_number(lowered):
                raise ValueError(
                    "numeric labels are ambiguous: name the value that codes progressive disease "
                    "(--positive-label)"
                )
            raise ValueError(f"expected {ACCEPTED_LABELS}")
        if lowered == self.positive:
            return 0
        if _is_number(self.positive) and not _is_number(lowered):
            raise ValueError(f"expected a numeric code like {self.positive!r} or {ACCEPTED_LABELS}")
        if self.other is None:
            self.other = lowered
        if lowered == self.other:
            return 1
        raise ValueError(
            f"with {self.positive!r} coding progressive disease and {self.other!r} disease control, "
            f"a third code is not allowed (or use {ACCEPTED_LABELS})"
        )


def manifest_phases(header: list[str]) -> tuple[str, ...]:
    """The phases a manifest's columns give when none are asked for.

    A ``volume`` column: any one series; else its ``volume_<phase>`` columns, in the
    contract's canonical order (arterial, portal venous, delayed, non-contrast).
    """
    present = [p for p in PHASES if PHASE_COLUMN_PREFIX + p in header]
    if "volume" in header or not present:
        return LEGACY_PHASES
    return tuple(present)


def volume_columns(header: list[str], phases: tuple[str, ...]) -> tuple[str, ...]:
    """The columns that hold each channel's volume; a single phase may use ``volume``."""
    if phases == LEGACY_PHASES:
        return ("volume",)
    if len(phases) == 1 and PHASE_COLUMN_PREFIX + phases[0] not in header:
        return ("volume",)
    return tuple(PHASE_COLUMN_PREFIX + p for p in phases)


def _thickness(text: str) -> float | None:
    if text.lower() in MISSING:
        return None
    try:
        value = float(text)
    except ValueError:
        raise ValueError("not a number") from None
    if not value > 0 or value != value or value == float("inf"):
        raise ValueError("must be a positive number of millimetres")
    return value


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def read_manifest(
    path: Path,
    schema: FeatureSchema,
    *,
    needs_volume: bool = True,
    units: UnitConverter | None = None,
    positive_label: str | None = None,
    phases: tuple[str, ...] | None = None,
) -> Manifest:
    """Every case of ``path``, or a ``ManifestError`` listing every problem.

    ``needs_volume``: False for clinical-only models, which never read a volume.
    ``units``: converts ``name[unit]`` columns; without it only canonical units pass.
    ``positive_label``: the label value that codes progressive disease, for numeric labels.
    ``phases``: the model's channels; None takes them from the columns (``manifest_phases``).
    """
    if not path.is_file():
        raise ManifestError(path, ["no such file"])
    raw = path.read_bytes()
    problems: list[str] = []
    cases: list[ManifestCase] = []
    synthetic = False
    labels = _Labels(positive_label)
    reader = csv.DictReader(raw.decode("utf-8-sig", errors="replace").splitlines())
    header = list(reader.fieldnames or [])
    try:
        phases = validate_phases(phases, "--phases") if phases is not None else manifest_phases(header)
    except ValueError as exc:
        raise ManifestError(path, [f"line 1: {exc}"]) from None
    channels = volume_columns(header, phases) if needs_volume else ()
    required = ("case_id", "label", *channels)
    absent = [c for c in required if c not in header]
    if absent:
        hint = ""
        if any(c.startswith("volume") for c in absent):
            hint = f" (the model reads phases {', '.join(phases)}: one volume column per phase)"
        raise ManifestError(path, [f"line 1: missing column(s) {', '.join(absent)}{hint}"])
    columns = _feature_columns(header, schema, units, problems)
    seen: set[str] = set()
    label_values: set[str] = set()
    for line, row in enumerate(reader, start=2):
        case_id = _cell(row, "case_id")
        if not case_id:
            problems.append(f"line {line}, column case_id: empty")
            continue
        if case_id in seen:
            problems.append(f"line {line}, column case_id, value {case_id!r}: duplicate case_id")
        seen.add(case_id)
        label: int | None = None
        label_values.add(_cell(row, "label").lower())
        try:
            label = labels(_cell(row, "label"))
        except ValueError as exc:
            problems.append(f"line {line}, column label, value {_cell(row, 'label')!r}: {exc}")
        paths: list[Path] = []
        for channel in channels:
            given = _cell(row, channel)
            paths.append((path.parent / given).resolve())
            if not given or not paths[-1].exists():
                problems.append(f"line {line}, column {channel}, value {given!r}: does not exist")
        thickness: float | None = None
        try:
            thickness = _thickness(_cell(row, THICKNESS_COLUMN))
        except ValueError as exc:
            problems.append(
                f"line {line}, column {THICKNESS_COLUMN}, value {_cell(row, THICKNESS_COLUMN)!r}: {exc}"
            )
        marker = _cell(row, SYNTHETIC_COLUMN).lower()
        if marker in _YES:
            synthetic = True
        elif marker not in _NO:
            problems.append(f"line {line}, column {SYNTHETIC_COLUMN}, value {marker!r}: expected yes or no")
        clinical: dict[str, object] = {name: None for name in schema.names}
        for column in columns:
            cell = _cell(row, column.header)
            try:
                clinical[column.feature] = _value(column, cell, schema, units)
            except ValueError as exc:
                problems.append(f"line {line}, column {column.header}, value {cell!r}: {exc}")
        if label is not None:
            cases.append(
                ManifestCase(
                    case_id,
                    label,
                    paths[0] if paths else None,
                    clinical,
                    line,
                    tuple(paths) if len(paths) > 1 else (),
                    thickness,
                )
            )
    if labels.positive is not None and labels.positive not in label_values:
        problems.append(f"column label: no row has the value {positive_label!r} given as progressive disease")
    if problems:
        raise ManifestError(path, problems)
    if len({c.label for c in cases}) < 2:
        raise ManifestError(path, ["column label: needs cases of both classes"])
    return Manifest(
        path=path,
        cases=cases,
        sha256=hashlib.sha256(raw).hexdigest(),
        synthetic=synthetic,
        columns=[c.feature for c in columns],
        units={c.feature: c.unit for c in columns if c.unit is not None},
        positive_label=positive_label,
        phases=phases,
        volume_columns=channels,
        phase_columns=tuple(c for c in header if c.startswith(PHASE_COLUMN_PREFIX)),
    )


def load_case_volume(case: ManifestCase, loader: VolumeLoader) -> np.ndarray:
    """(slices, rows, columns) for one phase; (slices, phases, rows, columns) for several.

    The phases of a case must share one slice grid (resampled beforehand, as the
    gateway does); otherwise a ``ValueError`` names the case and the shapes.
    """
    paths = case.volume_paths
    if not paths:
        raise ValueError(f"case {case.case_id}: an image model needs a volume")
    if len(paths) == 1:
        return loader(paths[0])
    volumes = [loader(p) for p in paths]
    shapes = [v.shape for v in volumes]
    if len(set(shapes)) != 1:
        raise ValueError(
            f"case {case.case_id}: its phases have shapes {', '.join(str(s) for s in shapes)}; "
            "resample them onto one slice grid first"
        )
    return np.stack(volumes, axis=1)


def load_cached_volume(path: Path) -> np.ndarray:
    """A (slices, rows, columns) HU volume saved with numpy."""
    if path.suffix == ".npz":
        with np.load(path) as archive:
            volume = archive["volume"] if "volume" in archive else archive[archive.files[0]]
    else:
        volume = np.load(path, allow_pickle=False)
    if volume.ndim != 3:
        raise ValueError(f"{path}: volume must be 3-D (slices, rows, columns), got shape {volume.shape}")
    return volume.astype(np.float32, copy=False)


def default_loader(dicom_loader: VolumeLoader | None = None) -> VolumeLoader:
    """Cached volumes directly; folders through ``dicom_loader`` (the gateway's series reader)."""

    def load(path: Path) -> np.ndarray:
        if path.is_dir():
            if dicom_loader is None:
                raise ValueError(f"{path}: DICOM folders need a DICOM loader")
            return dicom_loader(path)
        return load_cached_volume(path)

    return load
