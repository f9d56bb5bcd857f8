"""A synthetic cohort with a planted signal in both modalities.

Used by the tests and by the demo checkpoint: nothing here resembles real
patients. Each case has an image latent ``a`` (tumour enhancement and size) and
a clinical latent ``b`` (AFP, liver function, stage); disease control is
``a + b + noise > 0``. Either modality alone explains part of the outcome, so a
model that fuses both should beat the image-only and clinical-only variants.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model.config import CLASS_NAMES
from model.schema import FeatureKind, FeatureSchema


@dataclass(frozen=True)
class SyntheticCase:
    case_id: str
    label: int
    volume_hu: np.ndarray
    clinical: dict[str, object]
    image_latent: float
    clinical_latent: float


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


def write_cohort(cases: list[SyntheticCase], directory: Path, schema: FeatureSchema | None = None) -> Path:
    """Volumes as ``.npy`` and a manifest CSV as `tace train` reads it; returns the manifest."""
    schema = schema or FeatureSchema.load()
    volumes = directory / "volumes"
    volumes.mkdir(parents=True, exist_ok=True)
    manifest = directory / "manifest.csv"
    with manifest.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["case_id", "label", "volume", *schema.names])
        for case in cases:
            path = volumes / f"{case.case_id}.npy"
            np.save(path, case.volume_hu)
            row = [case.clinical.get(name) for name in schema.names]
            writer.writerow(
                [
                    case.case_id,
                    CLASS_NAMES[case.label],
                    f"volumes/{path.name}",
                    *["" if v is None else v for v in row],
                ]
            )
    return manifest
