"""The IOCM rejection note that withdraws a superseded SR: valid, titled, and referencing that SR."""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

import pydicom

from tests.support.services import require_tool
from worker.clinical_summary import ClinicalSummary
from worker.rejection import build_rejection, rejection_uid
from worker.sr import SrContent, build_sr, sr_identity
from worker.volume import read_volume

NO_CLINICAL = ClinicalSummary(total=43, missing=(), used=())


def _old_sr(ct_series) -> pydicom.Dataset:
    volume = read_volume(ct_series(slices=4, rows=16, columns=16))
    content = SrContent(0.7, "disease_control", "CLDCA", "demo-1", "ab" * 32, True, NO_CLINICAL)
    sr = build_sr(volume.headers, content, sr_identity(volume.study_instance_uid, "demo-1", 1))
    buffer = io.BytesIO()
    sr.save_as(buffer, enforce_file_format=True)
    return pydicom.dcmread(io.BytesIO(buffer.getvalue()))


def test_rejection_note_is_a_valid_kos_titled_rejected_for_quality_reasons(ct_series, tmp_path: Path) -> None:
    dciodvfy = require_tool("dciodvfy")
    old = _old_sr(ct_series)
    data = build_rejection(old)
    note = pydicom.dcmread(io.BytesIO(data))
    again = pydicom.dcmread(io.BytesIO(build_rejection(old)))
    assert again.SOPInstanceUID == note.SOPInstanceUID, "a redelivered send makes the same note"
    assert again.SeriesInstanceUID == note.SeriesInstanceUID
    assert note.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.59"
    assert note.SOPInstanceUID == rejection_uid(old.SOPInstanceUID)
    assert note.StudyInstanceUID == old.StudyInstanceUID and note.PatientID == old.PatientID
    title = note.ConceptNameCodeSequence[0]
    assert (title.CodeValue, title.CodingSchemeDesignator, title.CodeMeaning) == (
        "113001",
        "DCM",
        "Rejected for Quality Reasons",
    )
    referenced = note.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == old.SeriesInstanceUID
    assert referenced.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == old.SOPInstanceUID
    path = tmp_path / "note.dcm"
    path.write_bytes(data)
    verify = subprocess.run([dciodvfy, str(path)], capture_output=True, text=True)
    errors = [line for line in (verify.stdout + verify.stderr).splitlines() if line.startswith("Error")]
    assert errors == []


def test_a_superseding_sr_names_its_predecessor(ct_series, tmp_path: Path) -> None:
    dciodvfy = require_tool("dciodvfy")
    old = _old_sr(ct_series)
    volume = read_volume(ct_series(slices=4, rows=16, columns=16))
    content = SrContent(
        0.4,
        "progressive_disease",
        "CLDCA",
        "demo-1",
        "ab" * 32,
        True,
        NO_CLINICAL,
        inputs=("Used as portal venous phase: series 5 'PV 5mm'", "Not used: series 1 'Scout': localizer"),
    )
    new = build_sr(
        volume.headers, content, sr_identity(volume.study_instance_uid, "demo-1", 2), previous=[old]
    )
    predecessor = new.PredecessorDocumentsSequence[0]
    assert predecessor.StudyInstanceUID == old.StudyInstanceUID
    item = predecessor.ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert item.ReferencedSOPInstanceUID == old.SOPInstanceUID
    path = tmp_path / "new.dcm"
    new.save_as(path, enforce_file_format=True)
    verify = subprocess.run([dciodvfy, str(path)], capture_output=True, text=True)
    errors = [line for line in (verify.stdout + verify.stderr).splitlines() if line.startswith("Error")]
    assert errors == []
    dump = subprocess.run([require_tool("dsrdump"), "+Pl", str(path)], capture_output=True, text=True).stdout
    assert "Used as portal venous phase: series 5 'PV 5mm'" in dump


def test_a_pacs_that_takes_no_key_object_selection_refuses_the_note_for_good(
    ct_series, tmp_path: Path
) -> None:
    """pynetdicom raises ValueError when the peer accepted no context for the SOP class; a
    retry cannot change that, so the note's delivery is permanent, not retried for ever."""
    from pynetdicom import AE, evt
    from pynetdicom.sop_class import ComprehensiveSRStorage

    from tace.settings import Destination, Settings
    from worker.send import store_sr

    pacs = AE(ae_title="SRONLY")
    pacs.add_supported_context(ComprehensiveSRStorage)
    server = pacs.start_server(
        ("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, lambda event: 0x0000)]
    )
    try:
        port = server.socket.getsockname()[1]
        note = tmp_path / "note.dcm"
        note.write_bytes(build_rejection(_old_sr(ct_series)))
        result = store_sr(
            Settings(data_dir=tmp_path / "data"), Destination.parse(f"SRONLY@127.0.0.1:{port}"), note
        )
    finally:
        server.shutdown()
    assert (result.delivered, result.transient) == (False, False), result
    assert "not accepted" in result.detail
