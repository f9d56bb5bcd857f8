"""`tace series classify DIR` on a folder of small header-only DICOM files, as a site would run it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from tests.support.processes import tace_env

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
PATIENT_NAME = "Phaseprobe^Wilhelmina"
PATIENT_ID = "PHASE-CLI-4711"


def tace(*args: str, **settings: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tace", *args],
        env=tace_env(**settings),
        capture_output=True,
        text=True,
        timeout=120,
    )


def write(folder: Path, study: str, series: str, number: int, instance: int, **values: object) -> None:
    sop_class = COMPREHENSIVE_SR if values.get("Modality") == "SR" else CT_IMAGE
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.PatientName = PATIENT_NAME
    ds.PatientID = PATIENT_ID
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    ds.SeriesNumber = number
    ds.InstanceNumber = instance
    ds.Modality = "CT"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    folder.mkdir(parents=True, exist_ok=True)
    ds.save_as(folder / f"{number:03d}-{instance:03d}.dcm", enforce_file_format=True)


SIEMENS = [
    (1, "Topogram 0.6 T20s", {"ImageType": ["ORIGINAL", "PRIMARY", "LOCALIZER"]}),
    (2, "Nativ 5.0 B30f", {"AcquisitionTime": "101000"}),
    (3, "Arteriell 1.0 I30f", {"AcquisitionTime": "101540", "ContrastBolusAgent": "Ultravist"}),
    (4, "Arteriell 5.0 B30f", {"AcquisitionTime": "101541", "ContrastBolusAgent": "Ultravist"}),
    (5, "Portalvenös 5.0 B30f", {"AcquisitionTime": "101620", "ContrastBolusAgent": "Ultravist"}),
    (6, "Abdomen 5.0 B30f", {"AcquisitionTime": "101900", "ContrastBolusAgent": "Ultravist"}),
    (7, "ART+PV", {"AcquisitionTime": "101540", "ContrastBolusAgent": "Ultravist"}),
    (501, "Dose Report", {"Modality": "SR", "ImageType": []}),
]
GE = [
    (2, "ABD W/O", {"ContrastBolusStartTime": "090000", "AcquisitionTime": "085500"}),
    (3, "AP 1.25mm", {"ContrastBolusStartTime": "090000", "AcquisitionTime": "090038"}),
    (4, "PV 5mm", {"ContrastBolusStartTime": "090000", "AcquisitionTime": "090110"}),
]


@pytest.fixture
def exported(tmp_path: Path) -> dict[str, object]:
    folder = tmp_path / "export"
    siemens, ge = "1.2.826.0.1.3680043.8.498.71", "1.2.826.0.1.3680043.8.498.72"
    for number, description, values in SIEMENS:
        series = f"{siemens}.{number}"
        for instance in (2, 1):
            write(
                folder / "siemens" / str(number),
                siemens,
                series,
                number,
                instance,
                SeriesDescription=description,
                **values,
            )
    for number, description, values in GE:
        write(
            folder / "ge" / "deep" / "er",
            ge,
            f"{ge}.{number}",
            number,
            1,
            SeriesDescription=description,
            **values,
        )
    (folder / "README.txt").write_text("exported from the PACS\n")
    (folder / "siemens" / "DICOMDIR.bin").write_bytes(b"\x00" * 300)
    return {"folder": folder, "siemens": siemens, "ge": ge}


def test_classify_prints_each_series_by_study(exported: dict[str, object]) -> None:
    result = tace("series", "classify", str(exported["folder"]))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    siemens = lines.index(f"study {exported['siemens']}")
    assert lines[siemens + 1] == (
        "  series 1 'Topogram 0.6 T20s': unknown (high) - a localizer: Image Type (0008,0008) includes LOCALIZER"
    )
    assert lines[siemens + 2] == (
        "  series 2 'Nativ 5.0 B30f': non_contrast (high) - Series Description 'Nativ 5.0 B30f' matches "
        "the non-contrast keyword 'nativ'; Contrast/Bolus Agent (0018,0010) is absent"
    )
    assert (
        "  series 6 'Abdomen 5.0 B30f': delayed (low) - acquisition order: the 1st of 1 unnamed contrast "
        "acquisition(s) after series 5 (portal venous)"
    ) in result.stdout
    tie = lines.index("  series 7 'ART+PV': unknown (low) - Series Description names more than one phase")
    assert lines[tie + 1] == (
        "      conflict: Series Description 'ART+PV' names arterial ('art') and portal venous ('pv')"
    )
    assert (
        "  series 501 'Dose Report': unknown (high) - not an image series: Modality (0008,0060) is SR"
        in lines
    )
    assert lines[-1] == (
        "11 series in 2 study(ies); rules: default rules; 2 of 21 file(s) skipped (not DICOM, or no study/series)"
    )
    assert PATIENT_NAME.split("^")[0] not in result.stdout + result.stderr
    assert PATIENT_ID not in result.stdout + result.stderr


def test_classify_json(exported: dict[str, object]) -> None:
    result = tace("series", "classify", str(exported["folder"]), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert (report["files"], report["skipped_files"], report["rules"]) == (21, 2, "default rules")
    phases = {(row["study_instance_uid"], row["series_number"]): row for row in report["series"]}
    ge = exported["ge"]
    assert [(phases[(ge, n)]["phase"], phases[(ge, n)]["confidence"]) for n in (2, 3, 4)] == [
        ("non_contrast", "high"),
        ("arterial", "high"),
        ("portal_venous", "high"),
    ]
    assert phases[(ge, 3)]["evidence"] == (
        "acquired 38 s after Contrast/Bolus Start Time (0018,1042), in the arterial window [15, 50) s"
    )
    arterial = phases[(exported["siemens"], 3)]
    assert (arterial["instances"], arterial["phase"], arterial["conflicts"]) == (2, "arterial", [])


def test_site_rules_from_the_option_and_the_setting(exported: dict[str, object], tmp_path: Path) -> None:
    rules = tmp_path / "site.yaml"
    rules.write_text("windows:\n  arterial: [15, 35]\n  portal_venous: [40, 110]\n")
    for result in (
        tace("series", "classify", str(exported["folder"]), "--json", "--rules", str(rules)),
        tace("series", "classify", str(exported["folder"]), "--json", phase_rules=rules),
    ):
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        assert report["rules"] == str(rules)
        ge_ap = next(r for r in report["series"] if r["series_description"] == "AP 1.25mm")
        assert (ge_ap["phase"], ge_ap["confidence"]) == ("arterial", "high")
        assert ge_ap["evidence"] == (
            "Series Description 'AP 1.25mm' matches the arterial keyword 'ap'; acquired 38 s after "
            "Contrast/Bolus Start Time (0018,1042), outside every phase window"
        )


def test_a_malformed_rule_file_is_one_line_naming_it(exported: dict[str, object], tmp_path: Path) -> None:
    rules = tmp_path / "broken.yaml"
    rules.write_text("keywords:\n  arterial: [hap\n")
    result = tace("series", "classify", str(exported["folder"]), "--rules", str(rules))
    assert result.returncode == 2
    assert result.stderr.startswith(f"tace: error: {rules}: not valid YAML at line ")
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_folder_without_dicom_is_one_line_exit_2(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("no images here\n")
    result = tace("series", "classify", str(tmp_path))
    assert result.returncode == 2
    assert result.stderr == f"tace: error: no DICOM series under {tmp_path} (1 file(s) read, 1 skipped)\n"
    assert result.stdout == ""
