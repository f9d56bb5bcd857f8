"""Manifests as sites write them: units, missing values, coded values, labels, one problem per line."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from model.data import ManifestError, read_manifest
from model.schema import FeatureSchema
from model.synthetic import make_cohort, write_cohort


@pytest.fixture(scope="module")
def schema() -> FeatureSchema:
    return FeatureSchema.load()


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "manifest.csv"
    path.write_text(text)
    return path


def centimetres(feature: str, value: float, unit: str) -> float:
    if (feature, unit) == ("largest_tumour_diameter", "cm"):
        return value * 10
    raise ValueError(f"unit {unit!r} cannot be converted for {feature}")


def test_units_missing_values_and_provenance(tmp_path: Path, schema: FeatureSchema) -> None:
    path = _write(
        tmp_path,
        "case_id,label,largest_tumour_diameter[cm],albumin[g/dL],afp,cirrhosis\n"
        "a,CR,4.5,3.1,NA,yes\n"
        "b,pd,.,3.9,12,\n"
        "c,SD,,n/a,7,no\n"
        "d,progressive_disease,2,4,1,1\n",
    )
    data = read_manifest(path, schema, needs_volume=False, units=centimetres)
    by_id = {c.case_id: c for c in data.cases}
    assert by_id["a"].clinical["largest_tumour_diameter"] == 45.0
    assert by_id["a"].clinical["afp"] is None and by_id["a"].volume is None
    assert by_id["b"].clinical["largest_tumour_diameter"] is None
    assert by_id["b"].clinical["cirrhosis"] is None and by_id["c"].clinical["albumin"] is None
    assert by_id["c"].clinical["hemoglobin"] is None
    assert [c.label for c in data.cases] == [1, 0, 1, 0]
    assert data.units == {"largest_tumour_diameter": "cm"} and not data.synthetic
    assert data.columns == ["largest_tumour_diameter", "albumin", "afp", "cirrhosis"]
    assert data.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert data.provenance()["class_counts"] == {"progressive_disease": 2, "disease_control": 2}


def test_every_problem_on_its_own_line_with_line_column_and_value(
    tmp_path: Path, schema: FeatureSchema
) -> None:
    path = _write(
        tmp_path,
        "case_id,label,cirrhosis,albumin,ascites,largest_tumour_diameter[in],weight\n"
        "a,CR,2,3.1,none,1,70\n"
        "b,maybe,yes,99,mild,1,70\n"
        "c,PD,no,3,lots,1,heavy\n",
    )
    with pytest.raises(ManifestError) as caught:
        read_manifest(path, schema, needs_volume=False, units=centimetres)
    lines = str(caught.value).splitlines()
    assert lines[0] == f"{path}: 6 problems"
    assert lines[1:] == [
        "  column 'largest_tumour_diameter[in]': unit 'in' cannot be converted for largest_tumour_diameter",
        "  line 2, column cirrhosis, value '2': '2' is not a yes/no value "
        "(accepted: yes/no, y/n, true/false, 1/0, positive/negative, present/absent)",
        "  line 3, column label, value 'maybe': expected CR, PR, SD, PD, disease_control or progressive_disease",
        "  line 3, column albumin, value '99': 99 g/dL is outside the valid range 0.5..7",
        "  line 4, column ascites, value 'lots': 'lots' is not one of ['none', 'mild', 'moderate_severe']",
        "  line 4, column weight, value 'heavy': 'heavy' is not a number",
    ]


def test_numeric_labels_need_the_value_that_codes_progression(tmp_path: Path, schema: FeatureSchema) -> None:
    path = _write(tmp_path, "case_id,label,albumin\na,1,3\nb,0,4\nc,0,3.5\n")
    with pytest.raises(ManifestError) as caught:
        read_manifest(path, schema, needs_volume=False)
    assert "line 2, column label, value '1': numeric labels are ambiguous" in str(caught.value)
    assert "--positive-label" in str(caught.value)
    data = read_manifest(path, schema, needs_volume=False, positive_label="1")
    assert [c.label for c in data.cases] == [0, 1, 1]
    assert data.class_counts == {"progressive_disease": 1, "disease_control": 2}
    flipped = read_manifest(path, schema, needs_volume=False, positive_label="0")
    assert [c.label for c in flipped.cases] == [1, 0, 0]
    with pytest.raises(ManifestError, match="no row has the value '2'"):
        read_manifest(path, schema, needs_volume=False, positive_label="2")
    third = _write(tmp_path, "case_id,label\na,1\nb,0\nc,2\nd,NA\ne,maybe\n")
    with pytest.raises(ManifestError) as caught:
        read_manifest(third, schema, needs_volume=False, positive_label="1")
    assert str(caught.value).splitlines()[1:] == [
        "  line 4, column label, value '2': with '1' coding progressive disease and '0' disease control, "
        "a third code is not allowed (or use CR, PR, SD, PD, disease_control or progressive_disease)",
        "  line 5, column label, value 'NA': missing; expected CR, PR, SD, PD, disease_control or "
        "progressive_disease",
        "  line 6, column label, value 'maybe': expected a numeric code like '1' or CR, PR, SD, PD, "
        "disease_control or progressive_disease",
    ]


def test_volumes_are_required_only_for_image_models(tmp_path: Path, schema: FeatureSchema) -> None:
    path = _write(tmp_path, "case_id,label,albumin\na,CR,3\nb,PD,4\n")
    with pytest.raises(ManifestError, match="missing column\\(s\\) volume"):
        read_manifest(path, schema)
    assert len(read_manifest(path, schema, needs_volume=False).cases) == 2


def test_cohort_writer_marks_its_manifest_synthetic(tmp_path: Path, schema: FeatureSchema) -> None:
    manifest = write_cohort(make_cohort(4, seed=0, slices=2, size=8), tmp_path)
    data = read_manifest(manifest, schema)
    assert data.synthetic and data.provenance()["synthetic"] is True
    assert np.load(data.cases[0].volume).shape == (2, 8, 8)
    lines = manifest.read_text().splitlines()
    bad = lines[2].split(",")
    bad[2] = "volumes/absent.npy"
    lines[2] = ",".join(bad)
    manifest.write_text("\n".join(lines) + "\n")
    with pytest.raises(
        ManifestError, match="line 3, column volume, value 'volumes/absent.npy': does not exist"
    ):
        read_manifest(manifest, schema)


def test_phase_columns_give_the_channels_and_the_thickness(tmp_path: Path, schema: FeatureSchema) -> None:
    from model.data import load_cached_volume, load_case_volume
    from model.synthetic import make_phase_cohort

    manifest = write_cohort(make_phase_cohort(4, seed=0, slices=3, size=8), tmp_path)
    data = read_manifest(manifest, schema)
    assert data.phases == ("arterial", "portal_venous", "delayed")
    assert data.volume_columns == ("volume_arterial", "volume_portal_venous", "volume_delayed")
    case = data.cases[0]
    assert [p.name for p in case.volume_paths] == [
        f"{case.case_id}_{phase}.npy" for phase in ("arterial", "portal_venous", "delayed")
    ]
    assert case.slice_thickness_mm == 5.0
    stacked = load_case_volume(case, load_cached_volume)
    assert stacked.shape == (3, 3, 8, 8)
    np.testing.assert_array_equal(stacked[:, 1], np.load(case.volume_paths[1]))
    portal = read_manifest(manifest, schema, phases=("portal_venous",))
    assert portal.volume_columns == ("volume_portal_venous",)
    assert load_case_volume(portal.cases[0], load_cached_volume).shape == (3, 8, 8)
    assert portal.provenance()["phases"] == ["portal_venous"]


def test_phase_problems_are_named(tmp_path: Path, schema: FeatureSchema) -> None:
    from model.data import load_cached_volume, load_case_volume

    np.save(tmp_path / "a.npy", np.zeros((3, 8, 8), np.float32))
    np.save(tmp_path / "b.npy", np.zeros((4, 8, 8), np.float32))
    path = _write(
        tmp_path,
        "case_id,label,volume_arterial,volume_portal_venous,volume_delayed,slice_thickness_mm\n"
        "x,CR,a.npy,b.npy,a.npy,5\n"
        "y,PD,a.npy,a.npy,a.npy,thin\n",
    )
    with pytest.raises(ManifestError) as caught:
        read_manifest(path, schema)
    assert caught.value.problems == ["line 3, column slice_thickness_mm, value 'thin': not a number"]
    with pytest.raises(ManifestError, match=r"line 1: --phases: one phase .* got 2"):
        read_manifest(path, schema, phases=("arterial", "delayed"))
    with pytest.raises(
        ManifestError, match=r"missing column\(s\) volume_non_contrast \(the model reads phases"
    ):
        read_manifest(path, schema, phases=("non_contrast", "arterial", "delayed"))
    path.write_text(path.read_text().replace(",thin", ",1"))
    case = read_manifest(path, schema).cases[0]
    with pytest.raises(
        ValueError, match=r"case x: its phases have shapes \(3, 8, 8\), \(4, 8, 8\), \(3, 8, 8\)"
    ):
        load_case_volume(case, load_cached_volume)
