"""An SR as the worker writes it, built from a small synthetic CT series without the model."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

from worker.clinical_summary import ClinicalSummary
from worker.sr import SrContent, build_sr, sr_identity
from worker.volume import read_volume


def write_sr(ct_series: Callable[..., list[Path]], target: Path) -> Path:
    volume = read_volume(ct_series(slices=4, rows=16, columns=16))
    content = SrContent(
        0.7, "disease_control", "CLDCA", "demo-1", "ab" * 32, True, ClinicalSummary(43, (), ())
    )
    sr = build_sr(volume.headers, content, sr_identity(volume.study_instance_uid, "demo-1", 1))
    buffer = io.BytesIO()
    sr.save_as(buffer, enforce_file_format=True)
    target.write_bytes(buffer.getvalue())
    return target
