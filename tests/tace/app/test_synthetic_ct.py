from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from tace.app.synthetic_ct import COMPRESSIONS, SeriesSpec, make_series, phantom_hu


def _hu(ds: pydicom.Dataset) -> np.ndarray:
    return ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)


@pytest.mark.parametrize("compression", sorted(COMPRESSIONS))
@pytest.mark.parametrize("signed", [False, True])
def test_every_encoding_decodes_to_the_planted_hu(compression: str, signed: bool) -> None:
    if compression == "jpeg-lossless":
        from tests.support.services import require_tool

        require_tool("dcmcjpeg")
    spec = SeriesSpec(
        slices=2,
        rows=64,
        columns=64,
        signed=signed,
        compression=compression,
        rescale_slope=0.5 if signed else 1.0,
    )
    volume = phantom_hu(2, 64, 64, seed=3)
    datasets = make_series(spec, volume)
    assert [str(ds.file_meta.TransferSyntaxUID) for ds in datasets] == [COMPRESSIONS[compression]] * 2
    for index, ds in enumerate(datasets):
        assert ds.PixelRepresentation == int(signed)
        expected = np.clip(
            np.rint((volume[index] - spec.intercept) / spec.rescale_slope),
            -32768 if signed else 0,
            32767 if signed else 4095,
        )
        np.testing.assert_array_equal(ds.pixel_array, expected)
        inside_range = volume[index] > -1000
        error = np.abs(_hu(ds) - volume[index])[inside_range]
        assert error.max() <= spec.rescale_slope / 2 + 1e-3


def test_oblique_positions_follow_the_normal_and_instance_numbers_are_shuffled(
    tmp_path: Path,
) -> None:
    orientation = (0.866025, 0.5, 0.0, 0.0, 0.0, -1.0)
    spec = SeriesSpec(
        slices=12,
        rows=32,
        columns=32,
        orientation=orientation,
        slice_spacing=3.0,
        shuffle_instance_numbers=True,
        seed=5,
    )
    datasets = make_series(spec)
    normal = np.cross(np.array(orientation[:3]), np.array(orientation[3:]))
    by_position = sorted(datasets, key=lambda ds: float(np.array(ds.ImagePositionPatient, float) @ normal))
    gaps = np.diff([float(np.array(ds.ImagePositionPatient, float) @ normal) for ds in by_position])
    np.testing.assert_allclose(gaps, 3.0, atol=1e-4)
    numbers_in_position_order = [int(ds.InstanceNumber) for ds in by_position]
    assert sorted(numbers_in_position_order) == list(range(1, 13))
    assert numbers_in_position_order != list(range(1, 13))
    assert len({ds.SOPInstanceUID for ds in datasets}) == 12
    assert len({ds.SeriesInstanceUID for ds in datasets}) == 1


def test_written_files_are_part10_ct_with_patient_identity(ct_series) -> None:
    paths = ct_series(slices=3, rows=32, columns=32, patient_id="P77", issuer_of_patient_id="HOSP")
    ds = pydicom.dcmread(paths[0])
    assert ds.file_meta.MediaStorageSOPClassUID == pydicom.uid.CTImageStorage
    assert (ds.PatientID, ds.IssuerOfPatientID, ds.Modality) == ("P77", "HOSP", "CT")
    assert paths[0].name == f"{ds.SOPInstanceUID}.dcm"
    assert ds.Rows == 32 and ds.BitsStored == 12


def test_default_is_512_square() -> None:
    (ds,) = make_series(SeriesSpec(slices=1))
    assert (ds.Rows, ds.Columns) == (512, 512)
    assert ds.pixel_array.shape == (512, 512)


def test_phase_study_has_one_tagged_series_per_phase_on_one_grid(tmp_path: Path) -> None:
    from tace.app.synthetic_ct import write_phase_study

    written = write_phase_study(SeriesSpec(slices=3, rows=64, columns=64, slice_spacing=5.0), tmp_path)
    assert list(written) == ["arterial", "portal_venous", "delayed"]
    assert len(list(tmp_path.glob("*.dcm"))) == 9
    first = {name: pydicom.dcmread(paths[0]) for name, paths in written.items()}
    assert {ds.StudyInstanceUID for ds in first.values()} == {first["arterial"].StudyInstanceUID}
    assert len({ds.SeriesInstanceUID for ds in first.values()}) == 3
    assert len({ds.FrameOfReferenceUID for ds in first.values()}) == 1
    assert [ds.ContrastBolusAgentPhase for ds in first.values()] == ["ARTERIAL", "PORTAL_VENOUS", "DELAYED"]
    assert [ds.AcquisitionTime for ds in first.values()] == ["093035", "093110", "093300"]
    assert {ds.ContrastBolusStartTime for ds in first.values()} == {"093000"}
    assert [ds.SeriesDescription for ds in first.values()] == [
        "ABD ARTERIAL 5mm",
        "ABD PORTAL VENOUS 5mm",
        "ABD DELAYED 5mm",
    ]
    positions = {
        name: [pydicom.dcmread(p).ImagePositionPatient for p in paths] for name, paths in written.items()
    }
    assert positions["arterial"] == positions["portal_venous"] == positions["delayed"]
    liver = {  # a patch of liver beside the tumour, on the slice through the liver's middle
        name: max(float(_hu(pydicom.dcmread(p))[28:36, 12:16].mean()) for p in paths)
        for name, paths in written.items()
    }
    assert liver["arterial"] + 10 < liver["delayed"] < liver["portal_venous"] - 10, liver
