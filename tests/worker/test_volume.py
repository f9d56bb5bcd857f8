from __future__ import annotations

import shutil
from pathlib import Path

import highdicom
import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from model.preprocess import AIR_HU
from tace.app.synthetic_ct import SeriesSpec, phantom_hu, write_series
from worker.volume import VolumeError, read_volume


def _expected(spec: SeriesSpec) -> np.ndarray:
    """The planted HU in the reader's order (head to feet: decreasing along row x column)."""
    return phantom_hu(spec.slices, spec.rows, spec.columns, seed=spec.seed)[::-1]


def _assert_hu(volume: np.ndarray, spec: SeriesSpec) -> None:
    expected = _expected(spec)
    inside = expected > -1000
    assert np.abs(volume - expected)[inside].max() <= spec.rescale_slope / 2 + 1e-3


def test_slices_are_ordered_by_position_not_instance_number(tmp_path: Path) -> None:
    spec = SeriesSpec(
        slices=12,
        rows=48,
        columns=48,
        shuffle_instance_numbers=True,
        signed=True,
        rescale_slope=0.5,
        rescale_intercept=-20,
        orientation=(0.866025, 0.5, 0, 0, 0, -1),
    )
    volume = read_volume(write_series(spec, tmp_path))
    assert volume.hu.shape == (12, 48, 48) and volume.hu.dtype == np.float32
    _assert_hu(volume.hu, spec)
    assert volume.spacing == pytest.approx((2.5, 0.7, 0.7), abs=1e-4)
    assert len(volume.sop_instance_uids) == 12


@pytest.mark.parametrize("compression", ["rle", "jpeg2000", "jpegls", "jpeg-lossless", "deflate"])
def test_compressed_series_decode_to_the_same_hu(tmp_path: Path, compression: str) -> None:
    if compression == "jpeg-lossless" and shutil.which("dcmcjpeg") is None:
        from tests.support.services import missing

        missing("dcmcjpeg (DCMTK) is not installed")
    spec = SeriesSpec(slices=4, rows=32, columns=32, compression=compression, shuffle_instance_numbers=True)
    _assert_hu(read_volume(write_series(spec, tmp_path)).hu, spec)


def test_pixel_padding_becomes_air(tmp_path: Path) -> None:
    spec = SeriesSpec(slices=3, rows=32, columns=32, extra={"PixelPaddingValue": 0})
    volume = read_volume(write_series(spec, tmp_path))
    stored_zero = _expected(spec) <= -1024
    assert stored_zero.any()
    assert (volume.hu[stored_zero] == AIR_HU).all()


def _with(paths: list[Path], change) -> None:
    for path in paths:
        ds = pydicom.dcmread(path)
        change(ds)
        ds.save_as(path)


def test_mixed_orientation_is_refused_with_counts(tmp_path: Path) -> None:
    axial = write_series(SeriesSpec(slices=6, rows=16, columns=16), tmp_path)
    study, series = SeriesSpec(slices=6).uids()
    oblique = write_series(
        SeriesSpec(
            slices=2,
            rows=16,
            columns=16,
            seed=9,
            orientation=(1, 0, 0, 0, 0.8, -0.6),
            study_instance_uid=study,
            series_instance_uid=series,
        ),
        tmp_path / "x",
    )
    with pytest.raises(
        VolumeError, match=r"mixed orientation: 2 orientations in one series \(6 axial, 2 oblique slices\)"
    ):
        read_volume(axial + oblique)


def test_duplicate_positions_are_refused(tmp_path: Path) -> None:
    paths = write_series(SeriesSpec(slices=6, rows=16, columns=16), tmp_path)
    duplicate = tmp_path / "dup.dcm"
    ds = pydicom.dcmread(paths[2])
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.save_as(duplicate)
    with pytest.raises(VolumeError, match="duplicate slice positions: 1 slice"):
        read_volume([*paths, duplicate])


def test_missing_slices_are_refused_with_the_gap(tmp_path: Path) -> None:
    paths = write_series(SeriesSpec(slices=8, rows=16, columns=16), tmp_path)
    with pytest.raises(VolumeError, match=r"missing slices: 1 gap\(s\) in the stack, the first of 5.00 mm"):
        read_volume(paths[:3] + paths[4:])


def test_mixed_pixel_spacing_is_refused(tmp_path: Path) -> None:
    paths = write_series(SeriesSpec(slices=4, rows=16, columns=16), tmp_path)
    _with(paths[:1], lambda ds: setattr(ds, "PixelSpacing", [0.8, 0.8]))
    with pytest.raises(VolumeError, match="mixed pixel spacing"):
        read_volume(paths)


def test_unreadable_and_non_ct_files_are_named(tmp_path: Path) -> None:
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"\x00" * 10)
    with pytest.raises(VolumeError, match="junk.dcm: not a readable DICOM file"):
        read_volume([junk])
    mr = Path(pydicom.data.get_testdata_file("MR_small.dcm", download=False))
    with pytest.raises(VolumeError, match="no CT images in the series"):
        read_volume([mr])


def test_enhanced_multiframe_ct_through_its_functional_groups(tmp_path: Path) -> None:
    spec = SeriesSpec(slices=5, rows=32, columns=32, signed=True, shuffle_instance_numbers=True)
    legacy = [pydicom.dcmread(p) for p in write_series(spec, tmp_path / "single")]
    enhanced = highdicom.legacy.LegacyConvertedEnhancedCTImage(
        legacy,
        series_instance_uid=generate_uid(),
        series_number=9,
        sop_instance_uid=generate_uid(),
        instance_number=1,
    )
    path = tmp_path / "enhanced.dcm"
    enhanced.save_as(path)
    volume = read_volume([path])
    assert volume.hu.shape == (5, 32, 32)
    _assert_hu(volume.hu, spec)


def test_reading_a_series_registers_its_patient_for_scrubbing(tmp_path: Path) -> None:
    """Seen: a highdicom warning printed the patient's name into the worker log."""
    from tace import phi

    phi.forget_all()
    files = write_series(
        SeriesSpec(
            slices=3,
            rows=16,
            columns=16,
            patient_id="MRN884211",
            patient_name="Doe^Jane",
            patient_birth_date="19570311",
        ),
        tmp_path,
    )
    message = "Value 'Doe^Jane' (born 1957-03-11, 19570311) of patient MRN884211 was changed"
    assert phi.scrub(message) == message
    read_volume(files)
    assert phi.scrub(message) == (
        f"Value '{phi.REDACTED}^{phi.REDACTED}' (born {phi.REDACTED}, {phi.REDACTED}) "
        f"of patient {phi.REDACTED} was changed"
    )
