"""Synthetic cohorts: nothing here resembles real patients.

``make_cohort`` plants a signal in both modalities. Each case has an image latent
``a`` (tumour enhancement and size) and a clinical latent ``b`` (AFP, liver
function, stage); disease control is ``a + b + noise > 0``. Either modality alone
explains part of the outcome, so a model that fuses both should beat the
image-only and clinical-only variants. Used by the tests and the demo checkpoint.

``make_clinical_table`` is shaped like the clinical tables sites actually have:
about a hundred patients, few progressions, a dozen weakly informative columns
with some values missing, and no images. It is what an honest training pipeline
must not overfit.

``make_phase_cohort`` writes each case as three contrast phases (arterial,
portal venous, delayed) of one liver, with the image signal planted in the
lesion's enhancement pattern: disease control goes with strong arterial wash-in
and portal venous wash-out. The lesion's own density varies from case to case
by more than that (a nuisance shared by its phases), so one phase alone shows
the pattern only faintly, and a model reading all three phases as channels can
see it; a planted signal, which the training report names as such.

Every manifest written here carries a ``synthetic`` column, so a model trained on
it is always flagged as a demo model.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from model.config import CLASS_NAMES
from model.contract import THREE_PHASES
from model.data import PHASE_COLUMN_PREFIX, SYNTHETIC_COLUMN, THICKNESS_COLUMN
from model.schema import FeatureKind, FeatureSchema


@dataclass(frozen=True)
class SyntheticCase:
    case_id: str
    label: int
    volume_hu: np.ndarray | None
    clinical: dict[str, object]
    image_latent: float
    clinical_latent: float
    phase_volumes: dict[str, np.ndarray] = field(default_factory=dict)
    """One (slices, rows, columns) HU volume per contrast phase, on one slice grid."""
    slice_thickness_mm: float | None = None

    def stacked(self, phases: Sequence[str] = THREE_PHASES) -> np.ndarray:
        """(slices, phases, rows, columns): the phases as a three-phase model's channels."""
        return np.stack([self.phase_volumes[p] for p in phases], axis=1)


def _tumour_volume(rng: np.random.Generator, slices: int, size: int, latent: float) -> np.ndarray:
    z, y, x = np.meshgrid(
        np.linspace(-1, 1, slices),
        np.linspace(-1, 1, size),
        np.linspace(-1, 1, size),
        indexing="ij",
    )
    volume = np.full((slices, size, size), -1000.0, dtype=np.float32)
    volume[(x / 0.9) ** 2 + (y / 0.7) ** 2 <= 1.0] = 40.0
    liver = ((x + 0.25) / 0.5) ** 2 + ((y + 0.05) / 0.42) ** 2 <= 1.0
    volume[liver] = 60.0
    radius = 0.22 + 0.05 * latent
    cy, cx = rng.uniform(-0.12, 0.05), rng.uniform(-0.4, -0.15)
    tumour = ((x - cx) ** 2 + (y - cy) ** 2) / max(radius, 0.05) ** 2 + (z / 0.8) ** 2 <= 1.0
    volume[tumour] = 80.0 + 60.0 * latent
    volume += rng.normal(0.0, 10.0, size=volume.shape).astype(np.float32)
    return volume


PHASE_LIVER_HU = {"non_contrast": 55.0, "arterial": 75.0, "portal_venous": 115.0, "delayed": 95.0}
"""Liver parenchyma per phase: modest arterial, strongest portal venous enhancement."""
_LESION_OFFSET_HU = {"arterial": (20.0, 1.0), "portal_venous": (-10.0, -1.0), "delayed": (-15.0, -0.5)}
"""Per phase: the lesion's mean offset from the liver, and how it moves with the image latent."""


def _phase_volumes(
    rng: np.random.Generator,
    slices: int,
    size: int,
    latent: float,
    enhancement_hu: float,
    nuisance_hu: float,
) -> dict[str, np.ndarray]:
    """One liver with one lesion in three phases; the latent sets wash-in and wash-out.

    The lesion sits ``offset + slope * enhancement_hu * latent + nuisance`` from the
    liver: above it in the arterial phase (wash-in), below it in the portal venous
    and delayed phases (wash-out). The nuisance (the lesion's own density, same in
    every phase) and the lesion's size carry no label information.
    """
    z, y, x = np.meshgrid(
        np.linspace(-1, 1, slices),
        np.linspace(-1, 1, size),
        np.linspace(-1, 1, size),
        indexing="ij",
    )
    body = (x / 0.9) ** 2 + (y / 0.7) ** 2 <= 1.0
    liver = ((x + 0.25) / 0.5) ** 2 + ((y + 0.05) / 0.42) ** 2 <= 1.0
    radius = max(0.22 + 0.05 * rng.normal(), 0.08)
    cy, cx = rng.uniform(-0.12, 0.05), rng.uniform(-0.4, -0.15)
    lesion = ((x - cx) ** 2 + (y - cy) ** 2) / radius**2 + (z / 0.8) ** 2 <= 1.0
    density = nuisance_hu * rng.normal()
    volumes = {}
    for phase in THREE_PHASES:
        offset, slope = _LESION_OFFSET_HU[phase]
        volume = np.full((slices, size, size), -1000.0, dtype=np.float32)
        volume[body] = 40.0
        volume[liver] = PHASE_LIVER_HU[phase]
        volume[lesion] = PHASE_LIVER_HU[phase] + offset + slope * enhancement_hu * latent + density
        volume += rng.normal(0.0, 10.0, size=volume.shape).astype(np.float32)
        volumes[phase] = volume
    return volumes


def make_phase_cohort(
    n: int,
    *,
    seed: int = 0,
    slices: int = 8,
    size: int = 64,
    image_weight: float = 1.0,
    clinical_weight: float = 0.5,
    noise: float = 0.3,
    enhancement_hu: float = 20.0,
    nuisance_hu: float = 40.0,
    slice_thickness_mm: float = 5.0,
    missing_rate: float = 0.05,
    distractors: bool = True,
    schema: FeatureSchema | None = None,
) -> list[SyntheticCase]:
    """``n`` three-phase cases; disease control is ``image_weight * a + clinical_weight * b + noise > 0``.

    ``a`` moves the lesion by ``enhancement_hu`` per unit: up in the arterial
    phase, down in the portal venous one. The lesion's density varies by
    ``nuisance_hu`` in all phases alike, so the arterial minus portal venous
    contrast reveals ``a`` while the portal venous phase alone mostly shows the
    nuisance. Labs follow ``b`` as in ``make_cohort``.
    """
    schema = schema or FeatureSchema.load()
    rng = np.random.default_rng(seed)
    cases = []
    for index in range(n):
        a, b = rng.normal(), rng.normal()
        label = int(image_weight * a + clinical_weight * b + noise * rng.normal() > 0)
        cases.append(
            SyntheticCase(
                case_id=f"PHS{seed:03d}-{index:04d}",
                label=label,
                volume_hu=None,
                clinical=_clinical(rng, schema, b, missing_rate, distractors),
                image_latent=float(a),
                clinical_latent=float(b),
                phase_volumes=_phase_volumes(rng, slices, size, a, enhancement_hu, nuisance_hu),
                slice_thickness_mm=slice_thickness_mm,
            )
        )
    return cases


def _planted(rng: np.random.Generator, latent: float) -> dict[str, object]:
    """Liver function and tumour burden that follow the clinical latent (higher is better)."""

    def noisy(centre: float, slope: float, sd: float) -> float:
        return centre + slope * latent + rng.normal(0.0, sd)

    bilirubin = float(np.clip(np.exp(noisy(0.0, -0.35, 0.12)), 0.2, 10))
    direct = round(bilirubin * float(np.clip(noisy(0.35, -0.05, 0.03), 0.1, 0.8)), 3)
    stage = int(np.clip(round(noisy(2.0, -0.8, 0.3)), 0, 4))
    return {
        "afp": round(float(np.clip(10 ** noisy(2.0, -0.9, 0.2), 1, 1e5)), 3),
        "albumin": round(float(np.clip(noisy(3.6, 0.45, 0.12), 1.5, 5.5)), 3),
        "prealbumin": round(float(np.clip(noisy(18.0, 5.0, 1.5), 2, 50)), 3),
        "total_bilirubin": round(bilirubin, 3),
        "direct_bilirubin": direct,
        "indirect_bilirubin": round(bilirubin - direct, 3),
        "inr": round(float(np.clip(noisy(1.2, -0.12, 0.04), 0.8, 3)), 3),
        "platelets": round(float(np.clip(noisy(160.0, 40.0, 12.0), 20, 600)), 3),
        "bclc_stage": ["0", "A", "B", "C", "D"][stage],
        "portal_vein_thrombus": int(rng.random() < 1 / (1 + np.exp(2.0 * latent + 0.5))),
    }


def _clinical(
    rng: np.random.Generator,
    schema: FeatureSchema,
    latent: float,
    missing_rate: float,
    distractors: bool,
) -> dict[str, object]:
    planted = _planted(rng, latent)
    values: dict[str, object] = {}
    for feature in schema.features:
        draw = rng.random() if distractors else 0.5
        if feature.name in planted:
            values[feature.name] = planted[feature.name]
        elif feature.kind is FeatureKind.binary:
            values[feature.name] = int(draw < 0.3)
        elif feature.kind in (FeatureKind.ordinal, FeatureKind.nominal):
            assert feature.categories is not None
            values[feature.name] = feature.categories[int(draw * len(feature.categories))]
        else:
            low, high = feature.valid_range or (0.0, 1.0)
            span = min(high, low + (high - low) * 0.1) - low
            values[feature.name] = round(float(low + span * (0.2 + 0.6 * draw)), 3)
        if rng.random() < missing_rate:
            values[feature.name] = None
    return values


def make_cohort(
    n: int,
    *,
    seed: int = 0,
    slices: int = 8,
    size: int = 64,
    image_weight: float = 1.0,
    clinical_weight: float = 1.0,
    noise: float = 0.3,
    missing_rate: float = 0.05,
    distractors: bool = True,
    schema: FeatureSchema | None = None,
) -> list[SyntheticCase]:
    """``n`` cases, balanced in expectation; weights set how much each modality decides.

    ``distractors`` gives the unplanted features random values (as real data has);
    without them they are constant, which isolates the question of fusion.
    """
    schema = schema or FeatureSchema.load()
    rng = np.random.default_rng(seed)
    cases = []
    for index in range(n):
        a, b = rng.normal(), rng.normal()
        label = int(image_weight * a + clinical_weight * b + noise * rng.normal() > 0)
        cases.append(
            SyntheticCase(
                case_id=f"SYN{seed:03d}-{index:04d}",
                label=label,
                volume_hu=_tumour_volume(rng, slices, size, a),
                clinical=_clinical(rng, schema, b, missing_rate, distractors),
                image_latent=float(a),
                clinical_latent=float(b),
            )
        )
    return cases


_TABLE_CONTINUOUS: tuple[tuple[str, float, float, float, bool], ...] = (
    # feature, centre, spread, direction in progression (+1 higher, -1 lower), log-normal
    ("afp", 2.0, 0.9, +1, True),
    ("albumin", 3.6, 0.45, -1, False),
    ("total_bilirubin", 0.0, 0.4, +1, True),
    ("platelets", 150.0, 55.0, -1, False),
    ("inr", 1.15, 0.12, +1, False),
    ("creatinine", 0.9, 0.22, +1, False),
    ("largest_tumour_diameter", np.log(45.0), 0.45, +1, True),
)
CLINICAL_TABLE_COLUMNS = (
    *(name for name, *_ in _TABLE_CONTINUOUS),
    "tumour_count",
    "bclc_stage",
    "ascites",
    "portal_vein_thrombus",
    "sex",
)
"""The dozen columns of ``make_clinical_table``; every other schema feature is absent."""


def make_clinical_table(
    n: int = 96,
    *,
    progression_rate: float = 0.0625,
    effect: float = 0.5,
    missing_rate: float = 0.08,
    seed: int = 0,
) -> list[SyntheticCase]:
    """``n`` clinical-only cases, ``round(n * progression_rate)`` of them progressive.

    Each informative column is shifted by ``effect`` of its spread in the
    progressive cases (a standardized mean difference), so the columns together
    separate the classes only moderately and each alone barely (at the default a
    logistic regression cross-validates to an AUC of about 0.6 averaged over
    cohort seeds, like the public 96-patient table of issue 13); ``sex`` carries
    no signal. Values are missing completely at random at ``missing_rate``.
    """
    if not 0.0 < progression_rate < 1.0:
        raise ValueError(f"progression_rate must be between 0 and 1, got {progression_rate}")
    progressions = round(n * progression_rate)
    if progressions < 1 or progressions >= n:
        raise ValueError(f"{n} cases at rate {progression_rate} leave a class empty")
    rng = np.random.default_rng(seed)
    labels = np.ones(n, dtype=int)
    labels[rng.choice(n, size=progressions, replace=False)] = 0
    cases = []
    for index, label in enumerate(labels.tolist()):
        shift = effect * (1 - label)
        values: dict[str, object] = {}
        for name, centre, spread, direction, log_normal in _TABLE_CONTINUOUS:
            draw = centre + spread * (rng.normal() + direction * shift)
            number = float(np.exp(draw)) if log_normal else draw
            if name == "afp":
                number = float(10**draw)
            if name == "platelets":
                number = max(number, 20.0)
            values[name] = round(number, 3 if number < 100 else 1)
        values["tumour_count"] = int(1 + rng.poisson(1.2 * (1 + 0.5 * shift)))
        values["bclc_stage"] = ["A", "B", "C"][_ordinal(rng, (0.3, 0.5, 0.2), shift)]
        values["ascites"] = ["none", "mild", "moderate_severe"][_ordinal(rng, (0.7, 0.22, 0.08), shift)]
        values["portal_vein_thrombus"] = "yes" if rng.random() < 0.12 * (1 + 1.5 * shift) else "no"
        values["sex"] = "M" if rng.random() < 0.8 else "F"
        for name in CLINICAL_TABLE_COLUMNS:
            if rng.random() < missing_rate:
                values[name] = None
        cases.append(
            SyntheticCase(
                case_id=f"TAB{seed:03d}-{index:04d}",
                label=label,
                volume_hu=None,
                clinical=values,
                image_latent=0.0,
                clinical_latent=-shift,
            )
        )
    return cases


def _ordinal(rng: np.random.Generator, probabilities: tuple[float, ...], shift: float) -> int:
    """A category drawn from ``probabilities``, moved towards the worse end by ``shift``."""
    cut = np.cumsum(probabilities)[:-1]
    latent = float(rng.random()) * (1 - shift * 0.5) + shift * 0.5
    return int(np.searchsorted(cut, latent))


def write_cohort(
    cases: list[SyntheticCase],
    directory: Path,
    schema: FeatureSchema | None = None,
    columns: Sequence[str] | None = None,
) -> Path:
    """A manifest CSV as `tace train` reads it (and ``.npy`` volumes when the cases have them).

    ``columns``: the feature columns to write (default: every schema feature).
    Multi-phase cases get one ``volume_<phase>`` column per phase and their slice
    thickness. The ``synthetic`` column marks every row, so training on it yields a
    demo model.
    """
    schema = schema or FeatureSchema.load()
    names = list(columns) if columns is not None else schema.names
    phases = list(cases[0].phase_volumes) if cases and cases[0].phase_volumes else []
    with_volumes = any(case.volume_hu is not None for case in cases)
    if phases and with_volumes:
        raise ValueError("a cohort is either single-volume or multi-phase, not both")
    volume_columns = [PHASE_COLUMN_PREFIX + p for p in phases] or (["volume"] if with_volumes else [])
    thickness = [THICKNESS_COLUMN] if phases else []
    volumes = directory / "volumes"
    if volume_columns:
        volumes.mkdir(parents=True, exist_ok=True)
    directory.mkdir(parents=True, exist_ok=True)
    manifest = directory / "manifest.csv"
    with manifest.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["case_id", "label", *volume_columns, *thickness, SYNTHETIC_COLUMN, *names])
        for case in cases:
            written = _write_volumes(case, volumes, phases) if volume_columns else []
            row = [case.clinical.get(name) for name in names]
            writer.writerow(
                [
                    case.case_id,
                    CLASS_NAMES[case.label],
                    *written,
                    *([case.slice_thickness_mm] if thickness else []),
                    "yes",
                    *["" if v is None else v for v in row],
                ]
            )
    return manifest


def _write_volumes(case: SyntheticCase, volumes: Path, phases: list[str]) -> list[str]:
    """The case's ``.npy`` files, as manifest cells relative to the manifest."""
    if phases:
        if list(case.phase_volumes) != phases:
            raise ValueError(f"{case.case_id}: every case needs the phases {', '.join(phases)}")
        cells = []
        for phase in phases:
            path = volumes / f"{case.case_id}_{phase}.npy"
            np.save(path, case.phase_volumes[phase])
            cells.append(f"volumes/{path.name}")
        return cells
    if case.volume_hu is None:
        raise ValueError(f"{case.case_id}: every case needs a volume when any has one")
    path = volumes / f"{case.case_id}.npy"
    np.save(path, case.volume_hu)
    return [f"volumes/{path.name}"]
