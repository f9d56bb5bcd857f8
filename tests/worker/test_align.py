"""Multi-phase input: phases aligned on the reference phase's slices, or refused with the reason."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tace.app.synthetic_ct import SeriesSpec, write_series
from worker.align import align
from worker.volume import SeriesVolume, VolumeError, read_volume


def _volume(
    tmp_path: Path, name: str, *, slices: int, spacing: float, z0: float, fill, **spec
) -> SeriesVolume:
    depth = z0 + spacing * np.arange(slices)
    hu = np.stack([np.full((8, 8), fill(z), dtype=np.float32) for z in depth])
    spec = SeriesSpec(
        slices=slices,
        rows=8,
        columns=8,
        slice_spacing=spacing,
        origin=(-10.0, -10.0, z0),
        series_number=len(list(tmp_path.iterdir())) + 1,
        **spec,
    )
    return read_volume(write_series(spec, tmp_path / name, hu))


def test_other_phases_are_interpolated_linearly_onto_the_reference_slices(tmp_path: Path) -> None:
    reference = _volume(tmp_path, "pv", slices=8, spacing=5.0, z0=-100.0, fill=lambda z: 100.0)
    thin = _volume(tmp_path, "art", slices=40, spacing=1.0, z0=-98.0, fill=lambda z: 1000.0 + 10 * z)
    aligned = align([("arterial", thin), ("portal_venous", reference)], "portal_venous", min_slices=4)
    assert aligned.z_range == (-98.0, -65.0)
    assert aligned.hu.shape == (7, 2, 8, 8), "reference slices at -95 ... -65 lie in the common range"
    assert aligned.hu[:, 1].mean(axis=(1, 2)).tolist() == [100.0] * 7
    kept = [
        float(h.ImagePositionPatient[2]) for h in reference.headers if float(h.ImagePositionPatient[2]) >= -98
    ]
    assert sorted(kept) == [-95.0, -90.0, -85.0, -80.0, -75.0, -70.0, -65.0]
    assert aligned.hu[:, 0].mean(axis=(1, 2)) == pytest.approx([1000.0 + 10 * z for z in kept], abs=0.6)
    evidence = {ds.SOPInstanceUID for ds in aligned.evidence}
    assert len(evidence) == 7 + 7, (
        "the seven reference slices kept and the seven thin slices at their positions"
    )


def test_a_half_way_position_is_the_mean_of_its_neighbours(tmp_path: Path) -> None:
    reference = _volume(tmp_path, "pv", slices=4, spacing=2.0, z0=1.0, fill=lambda z: 0.0)
    other = _volume(tmp_path, "del", slices=5, spacing=2.0, z0=0.0, fill=lambda z: 100.0 * z)
    aligned = align([("portal_venous", reference), ("delayed", other)], "portal_venous")
    depths = [float(h.ImagePositionPatient[2]) for h in reference.headers]
    assert sorted(depths) == [1.0, 3.0, 5.0, 7.0]
    assert aligned.hu[:, 1, 0, 0].tolist() == pytest.approx([100.0 * z for z in depths], abs=1.0)
    assert len(aligned.evidence) == 4 + 5, "each half-way position reads both neighbours"


def test_different_frames_of_reference_are_refused(tmp_path: Path) -> None:
    reference = _volume(tmp_path, "pv", slices=8, spacing=5.0, z0=-100.0, fill=lambda z: 0.0)
    other = _volume(
        tmp_path,
        "art",
        slices=8,
        spacing=5.0,
        z0=-100.0,
        fill=lambda z: 0.0,
        extra={"FrameOfReferenceUID": "1.2.826.0.1.3680043.10.99"},
    )
    with pytest.raises(VolumeError, match="phases are not in one frame of reference"):
        align([("arterial", other), ("portal_venous", reference)], "portal_venous")


def test_too_little_overlap_is_refused_with_the_numbers(tmp_path: Path) -> None:
    reference = _volume(tmp_path, "pv", slices=10, spacing=5.0, z0=-100.0, fill=lambda z: 0.0)
    other = _volume(tmp_path, "del", slices=10, spacing=5.0, z0=-70.0, fill=lambda z: 0.0)
    with pytest.raises(VolumeError) as refused:
        align([("portal_venous", reference), ("delayed", other)], "portal_venous")
    assert str(refused.value) == "phases overlap over 15.0 mm (4 of 10 portal venous slices), 5 needed"
