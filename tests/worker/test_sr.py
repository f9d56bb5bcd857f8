from __future__ import annotations

import subprocess
from pathlib import Path

import pydicom
import pytest

from tace.app.synthetic_ct import SeriesSpec, make_series
from tests.support.services import require_tool
from worker.clinical_summary import ClinicalSummary
from worker.sr import SrContent, build_sr, sr_identity

CLINICAL = ClinicalSummary(
    total=43,
    missing=("serum albumin", "alpha-fetoprotein"),
    used=(
        "white blood cells 5.2 10*3/uL (observed 2026-01-14 07:20; HL7 LABS1 from LABSYS^HOSP, OBX 1)",
        "sex M (no observation date; CT header PatientSex)",
    ),
)


def _headers():
    datasets = make_series(SeriesSpec(slices=4, rows=32, columns=32))
    for ds in datasets:
        del ds.PixelData
    return datasets


def _content(**changes) -> SrContent:
    values = dict(
        probability=0.8123,
        label="disease_control",
        model_name="CLDCA",
        model_version="demo-1",
        checkpoint_sha256="ab" * 32,
        demo=True,
        clinical=CLINICAL,
        threshold=0.8731,
        validation="cross-validated (5-fold, pooled out-of-fold) AUC 0.71 (95% CI 0.55-0.86) on 96 cases",
    )
    values.update(changes)
    return SrContent(**values)


def test_uids_are_deterministic_per_series_version_and_generation() -> None:
    first = sr_identity("1.2.3", "demo-1", 1)
    assert first == sr_identity("1.2.3", "demo-1", 1)
    assert first.sop_instance_uid != sr_identity("1.2.3", "demo-1", 2).sop_instance_uid
    assert first.series_instance_uid == sr_identity("1.2.3", "demo-1", 2).series_instance_uid
    assert first.device_uid != sr_identity("1.2.3", "v2", 1).device_uid


def test_sr_validates_with_dciodvfy_and_reads_with_dsrdump(tmp_path: Path) -> None:
    dciodvfy = require_tool("dciodvfy")
    dsrdump = require_tool("dsrdump")
    headers = _headers()
    sr = build_sr(headers, _content(), sr_identity(headers[0].SeriesInstanceUID, "demo-1", 1))
    path = tmp_path / "sr.dcm"
    sr.save_as(path, enforce_file_format=True)
    verify = subprocess.run([dciodvfy, str(path)], capture_output=True, text=True)
    errors = [line for line in (verify.stdout + verify.stderr).splitlines() if line.startswith("Error")]
    assert errors == []
    warnings = {line for line in (verify.stdout + verify.stderr).splitlines() if line.startswith("Warning")}
    assert warnings <= {
        "Warning - Unrecognized defined term <99TACE> for value 1 of attribute <Coding Scheme Designator>"
    }
    dump = subprocess.run([dsrdump, "+Pl", str(path)], capture_output=True, text=True).stdout
    assert 'NUM:(,,"Probability of disease control")="0.8123" (1,UCUM,"no units")' in dump
    assert '(DC,99TACE,"Disease control (CR+PR+SD)")' in dump
    assert 'TEXT:(,,"Algorithm Name")="CLDCA"' in dump and 'TEXT:(,,"Algorithm Version")="demo-1"' in dump
    assert (
        'TEXT:(,,"Missing clinical features")="2 of 43 clinical values missing: serum albumin, '
        'alpha-fetoprotein"' in dump
    )
    assert (
        'TEXT:(,,"Clinical values used")="white blood cells 5.2 10*3/uL (observed 2026-01-14 07:20;' in dump
    )
    assert "sex M (no observation date; CT header PatientSex)" in dump
    assert (
        'TEXT:(,,"Prediction summary")="Predicted disease control: probability of disease control 0.812 '
        '(threshold 0.873); 2 of 43 clinical values missing: serum albumin, alpha-fetoprotein."' in dump
    )
    assert 'NUM:(,,"Decision threshold for disease control")="0.8731" (1,UCUM,"no units")' in dump
    assert (
        "Research use only; not for clinical decisions. Validation: cross-validated (5-fold, pooled "
        "out-of-fold) AUC 0.71 (95% CI 0.55-0.86) on 96 cases. The model that produced" in dump
    )
    assert "DEMO model trained on synthetic data" in dump
    assert "Verification Flag   : UNVERIFIED" in dump


def test_sr_joins_the_ct_study_in_its_own_series_with_evidence_and_equipment() -> None:
    headers = _headers()
    identity = sr_identity(headers[0].SeriesInstanceUID, "demo-1", 3)
    sr = build_sr(
        headers,
        _content(label="progressive_disease", demo=False, clinical=ClinicalSummary(43, (), ())),
        identity,
    )
    assert sr.StudyInstanceUID == headers[0].StudyInstanceUID
    assert sr.SeriesInstanceUID == identity.series_instance_uid != headers[0].SeriesInstanceUID
    assert (sr.SeriesNumber, sr.InstanceNumber, sr.VerificationFlag) == (9901, 3, "UNVERIFIED")
    assert sr.PatientID == headers[0].PatientID
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert {item.ReferencedSOPInstanceUID for item in evidence.ReferencedSOPSequence} == {
        ds.SOPInstanceUID for ds in headers
    }
    ours = [e for e in sr.ContributingEquipmentSequence if e.get("ManufacturerModelName") == "CLDCA"]
    assert len(ours) == 1
    assert ours[0].PurposeOfReferenceCodeSequence[0].CodeValue == "109102"
    assert ours[0].SoftwareVersions == "demo-1"
    text = " ".join(_texts(sr))
    assert "DEMO" not in sr.SeriesDescription and "Research use only" in text and "synthetic" not in text
    assert sr.CodingSchemeIdentificationSequence[0].CodingSchemeDesignator == "99TACE"
    roundtrip = pydicom.dcmread(pydicom.filebase.DicomBytesIO(_bytes(sr)))
    assert roundtrip.SOPInstanceUID == identity.sop_instance_uid


def _texts(item) -> list[str]:
    found = [str(item.TextValue)] if "TextValue" in item else []
    for child in item.get("ContentSequence", []):
        found.extend(_texts(child))
    return found


def _bytes(sr) -> bytes:
    import io

    buffer = io.BytesIO()
    sr.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "status,expected",
    [
        (0x0000, (True, False)),
        (0xB000, (True, False)),
        (0xA700, (False, True)),
        (0xA702, (False, True)),
        (0xA900, (False, False)),
        (0xC000, (False, False)),
    ],
)
def test_c_store_status_classes(status: int, expected: tuple[bool, bool]) -> None:
    from worker.send import classify

    assert classify(status) == expected


def test_sr_of_a_demo_checkpoint_says_demo_its_threshold_and_validated_auc(demo_checkpoint: Path) -> None:
    from model.checkpoint import read_meta
    from model.predictor import Predictor
    from model.synthetic import make_cohort

    (case,) = make_cohort(1, seed=3, slices=6, size=32)
    prediction = Predictor.load(demo_checkpoint, device="cpu").predict(case.volume_hu, case.clinical)
    meta = read_meta(demo_checkpoint)
    headers = _headers()
    sr = build_sr(
        headers, SrContent.of(prediction, CLINICAL), sr_identity(headers[0].SeriesInstanceUID, "demo-1", 1)
    )
    assert "DEMO" in sr.SeriesDescription
    group = sr.ContentSequence[-1].ContentSequence[0].ContentSequence
    numbers = {
        item.ConceptNameCodeSequence[0].CodeMeaning: float(item.MeasuredValueSequence[0].NumericValue)
        for item in group
        if item.ValueType == "NUM"
    }
    assert numbers["Decision threshold for disease control"] == pytest.approx(meta.threshold, abs=1e-4)
    texts = [item.TextValue for item in group if item.ValueType == "TEXT"]
    caveat = next(t for t in texts if t.startswith("Research use only"))
    auc = meta.validation["auc"]
    assert (
        f"Validation: held-out AUC {auc['value']:.2f} (95% CI {auc['low']:.2f}-{auc['high']:.2f})" in caveat
    )
    assert "synthetic cases" in caveat and "DEMO model trained on synthetic data" in caveat


@pytest.mark.parametrize(
    "probability,shown",
    [
        (0.99996, ">0.999"),
        (0.00002, "<0.001"),
        (0.5, "0.500"),
        (0.9994, ">0.999"),
        (0.9987, "0.999"),
        (0.0012, "0.001"),
    ],
)
def test_sr_never_states_a_certainty_the_model_cannot_have(probability: float, shown: str) -> None:
    headers = _headers()
    sr = build_sr(
        headers, _content(probability=probability), sr_identity(headers[0].SeriesInstanceUID, "demo-1", 1)
    )
    (summary,) = [t for t in _texts(sr) if t.startswith("Predicted")]
    assert f"probability of disease control {shown} " in summary


def test_sr_with_every_clinical_value_says_so_and_lists_no_missing_item() -> None:
    headers = _headers()
    complete = ClinicalSummary(
        43, (), ("serum albumin 3.1 g/dL (observed 2026-01-14 07:20; CSV labs.csv line 2)",)
    )
    sr = build_sr(
        headers, _content(clinical=complete), sr_identity(headers[0].SeriesInstanceUID, "demo-1", 1)
    )
    texts = _texts(sr)
    assert any("all 43 clinical values present" in t for t in texts)
    assert not any("missing:" in t for t in texts)
    group = sr.ContentSequence[-1].ContentSequence[0].ContentSequence
    status = [
        i for i in group if i.ValueType == "CODE" and i.ConceptNameCodeSequence[0].CodeValue == "TACE-CLIN"
    ]
    assert status[0].ConceptCodeSequence[0].CodeValue == "COMPLETE"
