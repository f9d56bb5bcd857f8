"""Training data: the manifest CSV and the volumes it points at.

A manifest has one row per case: ``case_id``, ``label`` and ``volume`` (a cached
``.npy``/``.npz`` HU volume, or a DICOM series folder that the caller's loader
reads), then one column per schema feature. Every bad row is reported with its
line number before any training starts.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model.config import CLASS_NAMES
from model.schema import FeatureSchema, SchemaError

VolumeLoader = Callable[[Path], np.ndarray]

LABELS = {
    CLASS_NAMES[1]: 1,
    "control": 1,
    "dc": 1,
    "cr": 1,
    "pr": 1,
    "sd": 1,
    "1": 1,
    CLASS_NAMES[0]: 0,
    "progressive": 0,
    "pd": 0,
    "0": 0,
}
"""Disease control is CR, PR or SD (mRECIST); progressive disease is PD."""

_REQUIRED = ("case_id", "label", "volume")


class ManifestError(ValueError):
    """Problems in a manifest, one line each, with line numbers."""

    def __init__(self, path: Path, problems: list[str]) -> None:
        shown = problems[:20] + ([f"... and {len(problems) - 20} more"] if len(problems) > 20 else [])
        super().__init__(f"{path}: " + "; ".join(shown))
        self.problems = problems


@dataclass(frozen=True)
class ManifestCase:
    case_id: str
    label: int
    volume: Path
    clinical: dict[str, object]
    line: int


def read_manifest(path: Path, schema: FeatureSchema) -> list[ManifestCase]:
    if not path.is_file():
        raise ManifestError(path, ["no such file"])
    problems: list[str] = []
    cases: list[ManifestCase] = []
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        absent = [c for c in _REQUIRED if c not in header]
        if absent:
            raise ManifestError(path, [f"missing column(s) {', '.join(absent)}"])
        unknown = schema.check_names([c for c in header if c not in _REQUIRED])
        if unknown:
            problems.append(f"columns not in schema {schema.name}: {', '.join(unknown)}")
        seen: set[str] = set()
        for line, row in enumerate(reader, start=2):
            case_id = (row.get("case_id") or "").strip()
            if not case_id:
                problems.append(f"line {line}: empty case_id")
                continue
            if case_id in seen:
                problems.append(f"line {line}: duplicate case_id {case_id!r}")
            seen.add(case_id)
            label = LABELS.get((row.get("label") or "").strip().lower())
            if label is None:
                problems.append(
                    f"line {line}: label {row.get('label')!r} is not disease control or progressive"
                )
            volume = (path.parent / (row.get("volume") or "").strip()).resolve()
            if not (row.get("volume") or "").strip() or not volume.exists():
                problems.append(f"line {line}: volume {row.get('volume')!r} does not exist")
            clinical = {name: row.get(name) for name in schema.names}
            for name, value in clinical.items():
                try:
                    schema.feature(name).to_number(value)
                except SchemaError as exc:
                    problems.append(f"line {line}: {exc}")
            if label is not None:
                cases.append(ManifestCase(case_id, label, volume, clinical, line))
    if problems:
        raise ManifestError(path, problems)
    if len({c.label for c in cases}) < 2:
        raise ManifestError(path, ["needs cases of both classes"])
    return cases


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
