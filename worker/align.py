"""Several contrast phases of one study -> one (slices, channels, rows, columns) HU array.

The phases are separate acquisitions: different slice counts, thickness and z
extent. They are aligned onto the slice positions of one reference phase (portal
venous when the model reads it) over the z range every phase covers, by linear
interpolation along z. This is only meaningful when the scanner put them in one
frame of reference and on one in-plane grid; otherwise, or when too little of
the reference phase is covered by all, the case is refused with the reason,
rather than fed to the model misaligned.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset

from worker.volume import SeriesVolume, VolumeError

MIN_OVERLAP_FRACTION = 0.5
"""The common z range must hold at least this share of the reference phase's slices."""


@dataclass(frozen=True)
class Aligned:
    hu: np.ndarray
    """(slices, channels, rows, columns) float32, channels in the order asked for."""
    evidence: list[Dataset]
    """Headers of the slices that contributed: the reference slices kept and their neighbours."""
    z_range: tuple[float, float]


def _depths(volume: SeriesVolume) -> np.ndarray:
    first = volume.headers[0]
    orientation = np.array(first.ImageOrientationPatient, dtype=float)
    normal = np.cross(orientation[:3], orientation[3:])
    if len(volume.headers) != len(volume.hu):
        return float(np.array(first.ImagePositionPatient, dtype=float) @ normal) + volume.spacing[
            0
        ] * np.arange(len(volume.hu))
    return np.array([float(np.array(h.ImagePositionPatient, dtype=float) @ normal) for h in volume.headers])


def _grid(volume: SeriesVolume) -> tuple[object, ...]:
    first = volume.headers[0]
    origin = np.array(first.ImagePositionPatient, dtype=float)
    orientation = tuple(round(float(v), 4) for v in first.ImageOrientationPatient)
    return (
        volume.hu.shape[1:],
        tuple(round(float(v), 3) for v in first.PixelSpacing),
        orientation,
        tuple(np.round(origin[:2], 2)),
    )


def align(volumes: Sequence[tuple[str, SeriesVolume]], reference: str, *, min_slices: int = 1) -> Aligned:
    """``volumes``: (phase, volume) in channel order; ``reference``: the phase whose slices are kept."""
    by_phase = dict(volumes)
    ref = by_phase[reference]
    frames = {phase: v.headers[0].get("FrameOfReferenceUID") for phase, v in volumes}
    if len({str(f) for f in frames.values()}) != 1 or None in frames.values():
        parts = ", ".join(f"{p.replace('_', ' ')} {f or 'none'}" for p, f in frames.items())
        raise VolumeError(f"phases are not in one frame of reference ({parts})")
    grids = {phase: _grid(v) for phase, v in volumes}
    if len(set(grids.values())) != 1:
        odd = [p.replace("_", " ") for p, g in grids.items() if g != grids[reference]]
        raise VolumeError(
            f"in-plane grid of {', '.join(odd)} differs from the {reference.replace('_', ' ')} phase"
        )
    depths = {phase: _depths(v) for phase, v in volumes}
    low = max(float(d.min()) for d in depths.values())
    high = min(float(d.max()) for d in depths.values())
    ref_depths = depths[reference]
    kept = np.flatnonzero((ref_depths >= low - 1e-3) & (ref_depths <= high + 1e-3))
    needed = max(min_slices, int(np.ceil(MIN_OVERLAP_FRACTION * len(ref_depths))))
    if len(kept) < needed:
        raise VolumeError(
            f"phases overlap over {max(high - low, 0):.1f} mm ({len(kept)} of {len(ref_depths)} "
            f"{reference.replace('_', ' ')} slices), {needed} needed"
        )
    targets = ref_depths[kept]
    channels = []
    evidence = [ref.headers[i] for i in kept] if len(ref.headers) == len(ref.hu) else list(ref.headers)
    for phase, volume in volumes:
        if phase == reference:
            channels.append(ref.hu[kept])
            continue
        order = np.argsort(depths[phase])
        z = depths[phase][order]
        stack = volume.hu[order]
        upper = np.clip(np.searchsorted(z, targets), 1, len(z) - 1)
        lower = upper - 1
        span = z[upper] - z[lower]
        weight = np.where(span > 0, (targets - z[lower]) / np.where(span > 0, span, 1), 0.0).clip(0, 1)
        weight = weight.astype(np.float32)[:, None, None]
        channels.append(stack[lower] * (1 - weight) + stack[upper] * weight)
        if len(volume.headers) == len(volume.hu):
            flat = weight[:, 0, 0]
            contributing = np.concatenate([lower[flat < 1], upper[flat > 0]])
            evidence.extend(volume.headers[i] for i in sorted({int(order[j]) for j in contributing}))
        else:
            evidence.extend(volume.headers)
    hu = np.stack(channels, axis=1).astype(np.float32)
    return Aligned(hu, evidence, (low, high))
