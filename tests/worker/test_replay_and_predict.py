"""Replay rules and the one-case command, without services."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
from sqlalchemy.engine import Engine

from tace.app.replay import ReplayRefused, replay_job
from tace.db import Job, JobState, Prediction, Stage, session_scope
from tace.jobs import claim, finish
from tests.factories import add_jobs
from tests.support.processes import tace_env


def _finish_as(engine: Engine, job_id: int, state: JobState, **kwargs) -> None:
    lease = claim(engine, job_id, Stage.infer, stall_seconds=60)
    assert lease is not None
    finish(engine, lease, state, **kwargs)


def test_replay_refuses_running_jobs_and_send_without_an_sr(sqlite_engine: Engine) -> None:
    running, failed = add_jobs(sqlite_engine, 2)
    assert claim(sqlite_engine, running, Stage.infer, stall_seconds=60) is not None
    with pytest.raises(ReplayRefused, match="is running now"):
        replay_job(sqlite_engine, running, Stage.infer, new_generation=False, stall_seconds=60, reason="test")
    _finish_as(sqlite_engine, failed, JobState.failed, error="volume: gap")
    with pytest.raises(ReplayRefused, match="has no stored SR"):
        replay_job(sqlite_engine, failed, Stage.send, new_generation=False, stall_seconds=60, reason="test")
    with pytest.raises(ReplayRefused, match="no job 999"):
        replay_job(sqlite_engine, 999, Stage.infer, new_generation=False, stall_seconds=60, reason="test")


def test_a_new_generation_is_a_new_job_only_when_asked(sqlite_engine: Engine) -> None:
    (job_id,) = add_jobs(sqlite_engine, 1)
    _finish_as(sqlite_engine, job_id, JobState.failed, error="model: out of memory")
    same = replay_job(
        sqlite_engine, job_id, Stage.infer, new_generation=False, stall_seconds=60, reason="retry"
    )
    assert same.replayed_as == job_id
    _finish_as(sqlite_engine, job_id, JobState.failed, error="again")
    fresh = replay_job(
        sqlite_engine, job_id, Stage.infer, new_generation=True, stall_seconds=60, reason="rerun"
    )
    assert fresh.replayed_as != job_id
    with session_scope(sqlite_engine) as session:
        new = session.get(Job, fresh.replayed_as)
        old = session.get(Job, job_id)
        assert (new.generation, str(new.state)) == (2, "received")
        assert str(old.state) == "failed"
        assert session.get(Prediction, 1) is None


def test_predict_one_folder_with_labs_and_an_sr(
    demo_checkpoint: Path, ct_series, tmp_path: Path, data_dir: Path
) -> None:
    folder = tmp_path / "series"
    ct_series(folder, slices=10, rows=64, columns=64, patient_id="ONE0001")
    labs = tmp_path / "labs.csv"
    labs.write_text("patient_id,date,albumin,1975-2,1975-2_unit\nONE0001,2026-01-10,3.1,30,umol/L\n")
    sr = tmp_path / "out" / "sr.dcm"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "tace",
            "predict",
            str(folder),
            "--labs",
            str(labs),
            "--sr-out",
            str(sr),
            "--json",
        ],
        env=tace_env(data_dir=data_dir, model_checkpoint=demo_checkpoint, device="cpu"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    output = json.loads(result.stdout)
    assert output["demo"] is True and output["slices"] == 10
    assert output["features"]["albumin"]["value"] == pytest.approx(3.1)
    assert "albumin" not in output["missing_features"] and "wbc" in output["missing_features"]
    assert sr.read_bytes()[128:132] == b"DICM"
    empty = tmp_path / "empty"
    empty.mkdir()
    refused = subprocess.run(
        [sys.executable, "-m", "tace", "predict", str(empty)],
        env=tace_env(data_dir=data_dir, model_checkpoint=demo_checkpoint),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode == 2 and refused.stderr.strip() == "tace: error: no files in the series"


def test_predict_reads_the_gateways_labs_skips_stray_files_and_recurses(
    demo_checkpoint: Path, ct_series, tmp_path: Path, data_dir: Path
) -> None:
    """A PACS export: the series one folder down, a README beside it, labs already in the gateway."""
    export = tmp_path / "export"
    ct_series(export / "DICOM" / "S1", slices=8, rows=48, columns=48, patient_id="ONE0002")
    (export / "README.TXT").write_text("exported by a viewer\n")
    labs = tmp_path / "labs.csv"
    labs.write_text("patient_id,date,albumin\nONE0002,2026-01-10,3.4\n")
    env = tace_env(data_dir=data_dir, model_checkpoint=demo_checkpoint, device="cpu")
    imported = subprocess.run(
        [sys.executable, "-m", "tace", "labs", "import", str(labs)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert imported.returncode == 0, imported.stderr
    result = subprocess.run(
        [sys.executable, "-m", "tace", "predict", str(export), "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    output = json.loads(result.stdout)
    assert output["slices"] == 8 and output["skipped_files"] == 1
    assert output["labs_source"] == "gateway database"
    assert output["features"]["albumin"]["value"] == pytest.approx(3.4)


def test_predict_refuses_a_folder_of_several_series_unless_one_is_chosen(ct_series, tmp_path: Path) -> None:
    from worker.one_case import CaseRefused, series_files

    first = ct_series(tmp_path / "study" / "a", slices=3, rows=16, columns=16, series_number=1, seed=1)
    ct_series(tmp_path / "study" / "b", slices=2, rows=16, columns=16, series_number=2, seed=2)
    with pytest.raises(CaseRefused, match="holds 2 series") as refused:
        series_files(tmp_path / "study")
    assert "--series" in str(refused.value)
    uid = str(pydicom.dcmread(first[0], stop_before_pixels=True).SeriesInstanceUID)
    chosen, skipped = series_files(tmp_path / "study", uid)
    assert sorted(chosen) == sorted(first) and skipped == 0
